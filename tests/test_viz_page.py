"""`fgc viz SPEC -o graph.html`: the page's data for every algorithm, that it is self-contained,
and (in headless Chromium, driven by selenium) that clicking a node and switching the
algorithm show the right facts."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from fgc.plan.program import load, loads
from fgc.tools import viz
from fgc.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]
M116 = ROOT / "specs" / "mixer-m-1-16.fg"
HAVE_DOT = shutil.which("dot") is not None
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BROWSER = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                            shutil.which("google-chrome")) if p), None)


@pytest.fixture(scope="module")
def data():
    return viz.page_data(load(M116), graphviz=False)


def test_every_algorithm_has_a_view(data):
    assert data["order"][:7] == ["bp", "l-bp", "lg-bp", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a"]
    assert data["selected"] == "lg-fg-a"  # the spec's train.algorithm
    for name in data["order"]:
        view = data["views"][name]
        assert view["drawing"] == "fgc" and view["svg"].startswith("<svg")
        assert name in view["summary"]
        for nid in view["nodes"]:  # every node with facts is drawn, clickable by its title
            assert f"<title>{nid}</title>" in view["svg"]


def test_node_facts_follow_the_algorithm(data):
    lg = data["views"]["lg-fg-a"]["nodes"]["stem.1/dense.0"]
    bp = data["views"]["bp"]["nodes"]["stem.1/dense.0"]
    assert lg["op"] == "dense 512" and lg["shape"] == "1×784 → 1×512"
    assert lg["params"] == ["weight 784×512", "bias 512"] and lg["num_params"] == 401920
    assert lg["group"] == bp["group"] == "backbone"
    assert lg["rule"].startswith("forward gradient, activity noise: gaussian, K=1")
    assert lg["losses"] == ["local@stem.1"]
    # dense mixes every channel, so a unit answers to the sum over the 16 groups
    assert lg["credit"] == ["local@stem.1: its own example, its own patch, the sum over 16 groups"]
    gl = data["views"]["lg-fg-a"]["nodes"]["stem.1/group_linear.4"]
    assert gl["credit"] == ["local@stem.1: its own example, its own patch, its own group of 16"]
    assert bp["rule"].startswith("backprop") and bp["losses"] == ["final@output"]
    site = data["views"]["lg-fg-a"]["nodes"]["stem.1/perturb.2"]["site"]
    assert site.startswith("activity noise")
    assert data["views"]["bp"]["nodes"]["stem.1/perturb.2"]["site"].startswith("inactive")
    head = data["views"]["lg-fg-a"]["nodes"]["head:loss:final@output"]
    assert head["group"] == "readout" and "⊘ readout from stem.1/relu.7" in head["stops"]
    loss = data["views"]["lg-fg-a"]["nodes"]["loss:local@stem.1"]
    assert loss["shape"] == "×1 patch ×16 groups = 16 replicas"


def test_an_algorithm_the_spec_cannot_run_keeps_its_place_with_the_reason():
    spec = """
input x = image(4, 4, 1), classes = 2
head h = mean(patches) | linear(classes)
network { out x | patchify(2) | dense(4) | relu }
loss final = h on output
"""
    d = viz.page_data(loads(spec), graphviz=False)
    assert "perturb" in d["views"]["fg-a"]["error"]  # E506: no perturbation site
    assert d["views"]["bp"]["nodes"]


def test_page_is_self_contained(tmp_path):
    spec = M116.read_text().replace('spec "LocalMixer M/1/16"', 'spec "</script><b>x"')
    out = tmp_path / "g.html"
    viz.write_page(loads(spec, str(M116)), out, graphviz=False)
    page = out.read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the title cannot close the data block
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(["']?http""", page)
    blob = re.search(r'<script type="application/json" id="fgc-data">(.*?)</script>', page, re.S)
    assert json.loads(blob.group(1))["title"] == "</script><b>x"


def test_cli_writes_the_page(tmp_path, capsys):
    out = tmp_path / "g.html"
    assert main(["viz", str(M116), "-o", str(out), "--algorithm", "bp"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert '"selected":"bp"' in out.read_text(encoding="utf-8")
    assert main(["viz", str(M116), "-o", str(out), "--algorithm", "lg-fg-x"]) == 1
    assert "did you mean `lg-fg-w`?" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz `dot` is not installed")
def test_graphviz_drawing_has_every_node():
    view = viz.page_data(load(M116), "lg-fg-a", graphviz=True)["views"]["lg-fg-a"]
    assert view["drawing"] == "graphviz" and view["svg"].startswith("<svg")
    for nid in view["nodes"]:
        assert f"<title>{nid}</title>" in view["svg"]


# --- in a browser ------------------------------------------------------------------------

def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if BROWSER is None or not os.path.exists(DRIVER):
        pytest.skip("headless Chromium and chromedriver are not installed "
                    "(Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):
        opts.add_argument(arg)
    # an explicit driver: selenium never tries to download one
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def _click_node(driver, nid):
    from selenium.webdriver.common.by import By
    for g in driver.find_elements(By.CSS_SELECTOR, "#canvas g.node"):
        if g.find_element(By.TAG_NAME, "title").get_attribute("textContent") == nid:
            driver.execute_script(  # the center of its shape, as a user clicks it
                "const r = arguments[0].getBoundingClientRect();"
                "document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2).dispatchEvent("
                "new MouseEvent('click', {bubbles: true, clientX: r.x + r.width / 2,"
                " clientY: r.y + r.height / 2}));", g)
            return
    raise AssertionError(f"no node {nid} drawn")


def test_click_a_node_and_switch_the_algorithm_in_chromium(tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    driver = _browser()
    monkeypatch.chdir(ROOT)  # spans read specs/..., as for a user in the checkout
    try:
        for graphviz in ([True, False] if HAVE_DOT else [False]):
            page = tmp_path / f"g-{graphviz}.html"
            viz.write_page(load("specs/mixer-m-1-16.fg"), page, graphviz=graphviz)
            driver.get(page.as_uri())
            assert driver.execute_script("return window.fgcPage.current()") == "lg-fg-a"
            _click_node(driver, "stem.1/dense.0")
            panel = driver.find_element(By.ID, "panel").text
            for needle in ("stem.1/dense.0", "dense 512", "1×784 → 1×512", "weight 784×512",
                           "backbone", "forward gradient, activity noise: gaussian, K=1",
                           "local@stem.1: its own example, its own patch, the sum over 16 groups"):
                assert needle in panel, panel
            selected = driver.find_elements(By.CSS_SELECTOR, "#canvas g.node.selected")
            assert len(selected) == 1
            Select(driver.find_element(By.ID, "algorithm")).select_by_value("bp")
            panel = driver.find_element(By.ID, "panel").text
            assert "stem.1/dense.0" in panel and "backprop" in panel and "final@output" in panel
            assert "activity noise" not in panel
            # zoom and pan change the view box; fit restores it
            box = driver.execute_script("return document.querySelector('#canvas svg')"
                                        ".getAttribute('viewBox')")
            driver.find_element(By.ID, "zoom-in").click()
            assert driver.execute_script("return document.querySelector('#canvas svg')"
                                         ".getAttribute('viewBox')") != box
            driver.find_element(By.ID, "fit").click()
            Select(driver.find_element(By.ID, "algorithm")).select_by_value("lg-fg-a")
            _click_node(driver, "stem.1/group_linear.4")
            assert driver.get_screenshot_as_file(str(tmp_path / f"page-{graphviz}.png"))
            assert (tmp_path / f"page-{graphviz}.png").stat().st_size > 10_000
            if os.environ.get("FGC_UPDATE_SCREENSHOT") and graphviz:
                shutil.copy(tmp_path / f"page-{graphviz}.png",
                            ROOT / "docs" / "figures" / "viz-page.png")
    finally:
        driver.quit()


def test_without_graphviz_the_page_draws_itself(tmp_path, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd == "dot" else real(cmd, *a, **k))
    out = tmp_path / "g.html"
    assert main(["viz", str(M116), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert '"drawing":"fgc"' in page and '"drawing":"graphviz"' not in page
    # one plan through render: a page with that algorithm only
    one = tmp_path / "one.html"
    viz.render(load(M116).plan("lg-bp"), one)
    data = json.loads(re.search(r'id="fgc-data">(.*?)</script>', one.read_text(), re.S).group(1))
    assert data["order"] == ["lg-bp"] and data["views"]["lg-bp"]["drawing"] == "fgc"
