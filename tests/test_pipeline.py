"""The one decoder factory (fusion.pipeline.build.build_decoder) and the one place of defaults
(fusion.core.defaults): every caller builds the same decoder from the same config, and the
layers below the command line never import it."""

import ast
import inspect
import json
import math
from pathlib import Path

import pytest

from fusion.cli import main as cli
from fusion.core import defaults
from fusion.core.posteriors import PosteriorsReader, PosteriorsWriter
from fusion.core.simulate import simulate_posteriors
from fusion.decoder.options import SearchOptions
from fusion.decoder.scorers import check_weights
from fusion.decoder.search import BeamSearchDecoder
from fusion.pipeline.build import build_decoder
from fusion.pipeline.config import ConfigError, DecodeConfig

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fusion", "lm", "hmm")
#: the layers, lowest first: a module imports (at load or in a function) only modules of its
#: own package or of a lower layer (STYLE.md, issue 45); ``fusion`` itself is the front
#: door, whose names load on first use
LAYERS = (("fusion.core",), ("lm", "hmm"), ("fusion.decoder", "fusion.run"),
          ("fusion.rescoring", "fusion.am"), ("fusion.pipeline", "fusion.corpus"),
          ("fusion.compat",), ("fusion.cli",))

default_lm = pytest.mark.skipif(not defaults.DEFAULT_LM.is_file(),
                                reason="the default 3-gram is not in this checkout")


@pytest.fixture
def post(tmp_path, table, rng):
    texts = {"u1": "hello world", "u2": "the cat sat", "u3": "good morning"}
    with PosteriorsWriter(tmp_path / "post.npz", token_table=table) as w:
        for utt_id, text in texts.items():
            w.write(simulate_posteriors(utt_id, text, table, rng)[0])
    return tmp_path / "post.npz"


def flags(*extra: str) -> DecodeConfig:
    """The config ``fusion decode`` builds from these flags."""
    return cli.decode_config(cli.get_parser().parse_args(["decode", "p.npz", "-o", "h.jsonl", *extra]))


# -- defaults -------------------------------------------------------------------------------
def test_every_default_comes_from_fusion_defaults():
    from fusion.decoder.pyctc import PyctcdecodeBackend

    config = DecodeConfig.default()
    assert config == DecodeConfig()
    assert (config.decoder, config.lm, config.weights, config.rescore_weights) == (
        "beam", defaults.DEFAULT_LM, {}, None)
    assert SearchOptions().beam_size == config.search.beam_size == defaults.BEAM_SIZE
    assert inspect.signature(PyctcdecodeBackend).parameters["beam_size"].default == defaults.BEAM_SIZE
    parser = cli.get_parser()
    tune = parser.parse_args(["tune", "p.npz", "--dev", "d.jsonl", "--lm", "x.bin", "-o", "t"])
    assert tune.beam_size == defaults.BEAM_SIZE
    demo = parser.parse_args(["demo", "--manifest", "m.jsonl"])
    assert demo.lm == defaults.DEFAULT_LM
    assert config.weights_for(["lm", "word_bonus"]) == {"lm": 0.6, "word_bonus": 1.5}
    with pytest.raises(TypeError):
        defaults.DEFAULT_WEIGHTS["lm"] = 1.0  # read-only: one place, not one copy per caller


def string_constants(path: Path) -> set[str]:
    """The string literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs}


def test_the_unknown_word_name_and_the_default_lm_are_spelled_once():
    spelled = [p.relative_to(REPO).as_posix() for p in (REPO / "fusion").rglob("*.py")
               if "csrc" not in p.parts and defaults.OOV in string_constants(p)]
    assert spelled == ["fusion/core/defaults.py"]
    mentions = [p.relative_to(REPO).as_posix() for p in (REPO / "fusion").rglob("*.py")
                if "cmusphinx-3gram" in string_constants(p)]
    assert mentions == ["fusion/core/defaults.py"]


# -- the factory ----------------------------------------------------------------------------
@default_lm
def test_the_default_pipeline_is_what_fusion_decode_builds(post, table, tmp_path):
    built = build_decoder(DecodeConfig.default(), table)
    from_flags = build_decoder(flags("--decoder", "beam"), table)
    for decoder in (built, from_flags):
        assert isinstance(decoder, BeamSearchDecoder)
        assert [s.name for s in decoder.scorers] == ["lm", "word_bonus"]
        assert decoder.weights == {"acoustic": 1.0, "lm": 0.6, "word_bonus": 1.5}
        assert decoder.options == SearchOptions()
    assert flags("--decoder", "beam") == DecodeConfig.default()
    # the command's output is the factory's decoder's, byte for byte
    out = tmp_path / "h.jsonl"
    assert cli.main(["decode", str(post), "-o", str(out), "--decoder", "beam"]) == 0
    with PosteriorsReader(post) as reader:
        lines = [json.dumps(built.decode(reader[u]).to_dict(table), ensure_ascii=False) + "\n"
                 for u in reader.ids]
    assert out.read_text() == "".join(lines)


def test_lm_none_decodes_without_an_lm(post, table, tmp_path):
    config = flags("--decoder", "beam", "--lm", "none")
    assert config == DecodeConfig(lm=None)
    decoder = build_decoder(config, table)
    assert decoder.scorers == () and decoder.weights == {"acoustic": 1.0}
    # a config file may say it too, and a file's vocabulary goes with its LM
    (tmp_path / "c.toml").write_text('[lm]\npath = "none"\n')
    assert DecodeConfig.load(tmp_path / "c.toml") == DecodeConfig(lm=None)
    (tmp_path / "v.toml").write_text('[lm]\npath = "x.bin"\nvocab = "x.txt"\n')
    no_lm = DecodeConfig.load(tmp_path / "v.toml").with_overrides(lm="none")
    assert (no_lm.lm, no_lm.lm_vocab) == (None, None)


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    (tmp_path / "c.toml").write_text('[search]\ndecoder = "pyctcdecode"\nbeam_size = 8\n'
                                     '[weights]\nlm = 0.5\n[lm]\npath = "my.arpa"\n')
    config = DecodeConfig.load(tmp_path / "c.toml")
    assert (config.decoder, config.search.beam_size, config.weights, config.lm) == (
        "pyctcdecode", 8, {"lm": 0.5}, tmp_path / "my.arpa")
    assert config.search.nbest == SearchOptions().nbest  # what the file leaves out: the default
    over = config.with_overrides(decoder="beam", search={"beam_size": 4}, weights={"lm": 0.7})
    assert (over.decoder, over.search.beam_size, over.weights) == ("beam", 4, {"lm": 0.7})


@pytest.mark.parametrize("config", [
    DecodeConfig.default(),
    DecodeConfig(lm=None, decoder="pyctcdecode", search=SearchOptions(beam_size=4, nbest=2,
                                                                      blank_skip=None)),
    DecodeConfig(lm=Path("a.arpa"), lm_vocab=Path("v.txt"), weights={"oov": 2.0, "lm": 0.1},
                 hotwords=Path("h.txt"), lexicon=Path("w.txt"),
                 search=SearchOptions(beam_size=16, nbest=4, beam_threshold=math.inf),
                 rescore_weights={"acoustic": 1.0, "nlm": 0.3}, rescore_nlm="default",
                 rescore_hmm=Path("hmm.json")),
])
def test_to_dict_reads_back_equal(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert DecodeConfig.from_dict(data) == config


@pytest.mark.parametrize("config, message", [
    (DecodeConfig(lm=None, weights={"oov": 2.0}), "unknown-word penalty .* needs an LM"),
    (DecodeConfig(lm=None, lm_vocab=Path("v.txt")), "need an LM"),
    (DecodeConfig(weights={"lm": math.inf}), "must be finite"),
    (DecodeConfig(rescore_weights={"acoustic": 1.0}), "needs an N-best list"),
    (DecodeConfig(rescore_nlm="default"), r"need \[rescore.weights\]"),
    (DecodeConfig(decoder="pyctcdecode", weights={"acoustic": 0.5}), "weighs the acoustic score 1"),
    (DecodeConfig(decoder="greedy"), "decoder must be one of"),
])
def test_contradicting_settings_are_refused_in_one_place(config, message, table):
    with pytest.raises(ConfigError, match=message):
        config.validate()
    with pytest.raises(ConfigError, match=message):
        build_decoder(config, table)


def test_weights_name_exactly_the_scorers(table):
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        check_weights(["a", "b"], {"a": 1.0}, where="here")
    with pytest.raises(ValueError, match=r"here: .*unknown \['c'\]"):
        check_weights(["a"], {"a": 1.0, "c": 0.0}, where="here")
    with pytest.raises(ValueError, match="finite"):
        check_weights(["a"], {"a": math.nan}, where="here")
    check_weights(["a"], {"a": 0.0}, where="here")  # 0 switches a score off
    with pytest.raises(ValueError, match=r"unknown \['lm'\]"):  # a weight for no scorer
        build_decoder(DecodeConfig(lm=None, weights={"lm": 0.5}), table)


def test_given_scorers_are_weighed_by_the_config(table):
    from fusion.decoder.scorers import HotwordScorer, WordBonus

    config = DecodeConfig(lm=None, weights={"word_bonus": 1.5},
                          search=SearchOptions(beam_size=4, nbest=2))
    decoder = build_decoder(config, table, scorers=[WordBonus(), HotwordScorer({"cat": 1.0})])
    assert decoder.weights == {"acoustic": 1.0, "word_bonus": 1.5, "hotwords": 2.0}
    assert decoder.options == config.search


def test_the_pyctcdecode_search_is_built_by_the_same_factory(post, table, tmp_path):
    pytest.importorskip("pyctcdecode")
    from fusion.decoder.pyctc import PyctcdecodeBackend

    (tmp_path / "hot.txt").write_text("hello world\n")
    config = flags("--decoder", "pyctcdecode", "--lm", "none", "--hotwords", str(tmp_path / "hot.txt"),
                   "--beam-size", "8")
    decoder = build_decoder(config, table)
    assert isinstance(decoder, PyctcdecodeBackend) and decoder.beam_size == 8
    assert decoder._decoder._language_model.weights == (defaults.DEFAULT_WEIGHTS["hotwords"],)
    with PosteriorsReader(post) as reader:
        assert [decoder.decode(reader[u]).best.text for u in reader.ids] == [
            "hello world", "the cat sat", "good morning"]


# -- layers -----------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(*folders: str) -> dict[str, Path]:
    return {module_name(p): p for folder in folders for p in (REPO / folder).rglob("*.py")
            if "csrc" not in p.parts}


def imports(path: Path, *, module_level: bool) -> set[str]:
    """The modules ``path`` imports (all of them, or those imported when it loads: not in
    functions, not under ``if TYPE_CHECKING``), ``from a import b`` giving ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    found: set[str] = set()

    def add(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                add(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(part)

    if module_level:
        visit(tree.body)
    else:
        for node in ast.walk(tree):
            add(node)
    return found


def package(module: str) -> str:
    """``fusion.decoder.search`` -> ``fusion.decoder``; ``lm.ngram`` -> ``lm``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "fusion" and len(parts) > 1 else parts[0]


def layer(module: str) -> int:
    return next(k for k, names in enumerate(LAYERS) if package(module) in names)


def test_every_package_has_a_layer_and_imports_only_its_own_and_lower_layers():
    modules = python_files(*PACKAGES)
    assert {package(m) for m in modules} - {"fusion"} == {p for names in LAYERS for p in names}
    offenders = {(m, i) for m, p in modules.items() if m != "fusion"
                 for i in imports(p, module_level=False)
                 if i in modules and i != "fusion" and package(i) != package(m)
                 and layer(i) >= layer(m)}
    assert offenders == set()


def test_nothing_outside_the_command_line_imports_it():
    clis = {m for m in python_files("fusion") if package(m) == "fusion.cli"}
    assert {"fusion.cli.main", "fusion.cli.tune", "fusion.cli.lm"} <= clis
    # the benchmarks use the library, or run the command as a program
    benchmarks = {(p.name, i) for p in (REPO / "benchmarks").glob("*.py")
                  for i in imports(p, module_level=False) if i in clis}
    assert benchmarks == set()
    # the tune command does not import the main one back (main adds its subcommand)
    assert "fusion.cli.main" not in imports(python_files("fusion")["fusion.cli.tune"],
                                            module_level=False)


def test_nothing_below_the_command_line_sees_argparse():
    seeing = {m for m, p in python_files(*PACKAGES).items()
              if package(m) != "fusion.cli" and "argparse" in imports(p, module_level=False)}
    assert seeing == set()


def test_no_import_circles_between_files():
    modules = python_files(*PACKAGES)
    graph = {m: {i for i in imports(p, module_level=True) if i in modules and i != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError(f"import circle: {' -> '.join([*path, m, n])}")
            if n not in state:
                walk(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [])


@pytest.mark.parametrize("module", ["fusion.core.defaults", "fusion.pipeline.config",
                                    "fusion.pipeline.build"])
def test_the_factory_loads_without_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules, 'pyctcdecode' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.split() == ["False", "False"]
