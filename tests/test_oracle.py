"""The gradient oracle: generated specs over every op, placement, head form, algorithm
and group mix, each checked by ``fgc verify``'s machinery against ``jax.grad`` of the
independent reference. CI runs a few; ``FGC_ORACLE_EXAMPLES=N`` runs a campaign
(``FGC_ORACLE_LOG=FILE`` appends one JSON line per case)."""

import json
import os

import jax
from hypothesis import HealthCheck, given, reject, settings

import fgc
from fgc.learning.verify import verify_plan
from oracle import cases

EXAMPLES = int(os.environ.get("FGC_ORACLE_EXAMPLES", "2"))
LOG = os.environ.get("FGC_ORACLE_LOG")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FGC_ORACLE_EXAMPLES"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(cases())
def test_generated_specs_get_unbiased_updates(case):
    text, algorithm = case
    try:
        plan = fgc.loads(text, "oracle.fg").plan(algorithm)
    except fgc.SpecError as e:  # the generator aims at valid specs; say which were not
        codes = sorted({d.code for d in e.diagnostics})
        if LOG:
            with open(LOG, "a") as f:
                f.write(json.dumps({"algorithm": algorithm, "rejected": codes}) + "\n")
        reject()
    with jax.enable_x64(True):
        report = verify_plan(plan, samples=1000, batch_size=3, seed=len(text))
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps({"algorithm": algorithm, "ok": report.ok, "biased": report.biased,
                                "seconds": report.seconds,
                                **({} if report.ok else {"spec": text, "report": report.format()})})
                    + "\n")
    assert report.ok, f"{text}\n{report.format()}"
