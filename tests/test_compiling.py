"""compile_smallest: one lowering compiled under each candidate's XLA options, the program
needing the least memory kept; the first where nothing can be measured or sizes tie."""

from types import SimpleNamespace

from fgc.training.compiling import compile_smallest, footprint


class _Lowered:
    """Stands in for a lowering: each option set compiles to a program of a given size."""

    def __init__(self, sizes):
        self.sizes, self.compiled_with = sizes, []

    def compile(self, compiler_options=None):
        key = tuple(sorted((compiler_options or {}).items()))
        self.compiled_with.append(key)
        size = self.sizes[key]
        if size is None:
            return SimpleNamespace(memory_analysis=lambda: None)
        stats = SimpleNamespace(argument_size_in_bytes=size, output_size_in_bytes=0,
                                temp_size_in_bytes=0, alias_size_in_bytes=0)
        return SimpleNamespace(memory_analysis=lambda: stats, size=size)


def test_keeps_the_smallest_program_and_says_which_options():
    low = _Lowered({(): 300, (("a", "1"),): 200, (("b", "2"),): 250})
    compiled, options = compile_smallest(low, ({}, {"a": "1"}, {"b": "2"}))
    assert compiled.size == 200 and options == {"a": "1"}
    assert len(low.compiled_with) == 3


def test_a_tie_or_an_unmeasurable_program_keeps_the_first():
    low = _Lowered({(): 300, (("a", "1"),): 300})
    assert compile_smallest(low, ({}, {"a": "1"}))[1] == {}
    low = _Lowered({(): None, (("a", "1"),): 100})
    compiled, options = compile_smallest(low, ({}, {"a": "1"}))
    assert options == {} and low.compiled_with == [()]  # nothing to compare by: no 2nd compile
    assert footprint(compiled) is None


def test_no_candidates_means_the_default():
    low = _Lowered({(): 10})
    assert compile_smallest(low, ())[1] == {}
