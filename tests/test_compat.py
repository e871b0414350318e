"""Tested trl/transformers ranges: the installed releases pass, untested ones are refused."""

import importlib
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from chainforge import compat
from chainforge.compat import (ALLOW_UNTESTED, TESTED, check_tested_versions, missing_private_parts,
                               untested)
from chainforge.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """Make importlib.metadata report `package==version`, through a dist-info folder put first on
    sys.path (what pip would leave behind), without touching the real installation."""
    monkeypatch.delenv(ALLOW_UNTESTED, raising=False)

    def install(package: str, version: str) -> None:
        site = tmp_path / f"site-{package}-{version}"
        info = site / f"{package}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()

    yield install
    importlib.invalidate_caches()


def test_installed_releases_are_tested(monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED, raising=False)
    assert untested() == []
    check_tested_versions()  # raises on an untested release


@pytest.mark.parametrize("package,version", [
    ("trl", "1.17.0"), ("trl", "2.0.0"), ("trl", "1.15.2"),
    ("transformers", "5.25.0"), ("transformers", "5.22.1"), ("transformers", "5.25.0.dev0"),
    ("transformers", "6.0.0"),
])
def test_untested_release_is_refused_with_the_fix(fake_release, package, version):
    fake_release(package, version)
    assert compat.installed_version(package) == version
    with pytest.raises(UsageError) as err:
        check_tested_versions()
    message = err.value.message
    assert f"{package} {version} is installed" in message
    assert f"tested with {package}{TESTED[package]}" in message
    assert f"pip install '{package}{TESTED[package]}'" in message
    assert f"{ALLOW_UNTESTED}=1" in message
    assert ("GRPOTrainer._generate" if package == "trl" else "LengthGroupedSampler") in message
    # Only the package asked about is checked.
    other = "transformers" if package == "trl" else "trl"
    check_tested_versions([other])


@pytest.mark.parametrize("package,version", [("trl", "1.16.3"), ("transformers", "5.23.2"),
                                             ("transformers", "5.24.0rc1")])
def test_patch_releases_of_a_tested_minor_pass(fake_release, package, version):
    fake_release(package, version)
    assert compat.installed_version(package) == version
    check_tested_versions()


def test_allow_untested_turns_the_error_into_a_warning(fake_release, monkeypatch, capsys):
    fake_release("trl", "1.17.0")
    monkeypatch.setenv(ALLOW_UNTESTED, "1")
    check_tested_versions()
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "Warning: trl 1.17.0 is installed" in err and f"{ALLOW_UNTESTED} is set" in err


def test_a_missing_package_is_refused_even_when_untested_is_allowed(monkeypatch):
    monkeypatch.setitem(TESTED, "chainforge-no-such-package", ">=1.0,<1.1")
    monkeypatch.setenv(ALLOW_UNTESTED, "1")
    with pytest.raises(UsageError, match="chainforge-no-such-package is not installed; .*pip install "
                                         "'chainforge-no-such-package>=1.0,<1.1'"):
        check_tested_versions(["chainforge-no-such-package"])


def test_pyproject_pins_are_the_tested_ranges():
    from helpers.files import read_toml

    project = read_toml(ROOT / "pyproject.toml")["project"]
    pins = {Requirement(d).name: Requirement(d).specifier for d in project["dependencies"]}
    for package, spec in TESTED.items():
        assert pins[package] == SpecifierSet(spec), f"pyproject pins {package}{pins[package]}, compat {spec}"
    extras = project["optional-dependencies"]
    assert {Requirement(d).name for d in extras["vllm"]} == {"vllm"}
    assert {Requirement(d).name for d in extras["deepspeed"]} == {"deepspeed"}
    assert "psutil" in pins


def test_private_parts_exist_in_the_installed_releases(monkeypatch):
    assert missing_private_parts() == []
    # The check notices a part that moved and an override whose parameters changed.
    monkeypatch.setattr(compat, "PRIVATE_PARTS", compat.PRIVATE_PARTS + [
        ("trl", "trl", "GRPOTrainer._no_such_method", (), "test"),
        ("trl", "trl", "GRPOTrainer._calculate_rewards", ("renamed_argument",), "test"),
        ("trl", "trl.no_such_module", "Thing", (), "test"),
    ])
    missing = missing_private_parts()
    assert len(missing) == 3
    assert "GRPOTrainer._no_such_method" in missing[0]
    assert "no parameter renamed_argument" in missing[1] and "completion_ids_list" in missing[1]
    assert "trl.no_such_module" in missing[2]


def test_compat_does_not_import_the_libraries_it_checks():
    import subprocess

    code = ("import sys; from chainforge.compat import check_tested_versions; check_tested_versions(); "
            "print([m for m in ('trl', 'transformers', 'torch') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("command, package", [("sft", "trl"), ("grpo", "trl"), ("distill", "transformers"),
                                              ("eval", "transformers"), ("reject", "transformers")])
def test_stages_refuse_an_untested_release_before_creating_their_output(fake_release, cli, tmp_path,
                                                                        command, package):
    fake_release(package, "9.0.0")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": "2"}\n')
    out = tmp_path / "out"
    models = ["--teacher", "smollm2", "--student", "smollm2-half"] if command == "distill" else ["--model", "smollm2"]
    r = cli(command, *models, "--data", data, "--output", out)
    assert r.exit_code == 2, r.stderr
    assert f"{package} 9.0.0" in r.stderr and "pip install" in r.stderr
    assert not out.exists()


def test_the_kv_cache_keyword_is_read_from_the_model_class():
    """transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns on every
    run); 5.23 and models with their own code take only `past_key_values`, and would ignore a
    `cache` they do not know. A PEFT wrapper is looked through to its base model."""
    from chainforge.compat import cache_kwarg

    class New:
        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs): ...

    class Wrapper:
        def __init__(self, base):
            self.base = base

        def forward(self, *args, **kwargs): ...

        def get_base_model(self):
            return self.base

    assert cache_kwarg(New()) == "cache"
    assert cache_kwarg(Old()) == "past_key_values"
    assert cache_kwarg(Wrapper(Old())) == "past_key_values"
    assert cache_kwarg(Wrapper(New())) == "cache"


def test_sampling_from_the_installed_transformers_raises_no_kv_cache_deprecation(tiny_model):
    import inspect
    import warnings

    from transformers import Qwen2ForCausalLM

    from chainforge.models import load_model, load_tokenizer, resolve_model
    from chainforge.sampling import generate

    ref = resolve_model(str(tiny_model))
    model, tok = load_model(ref), load_tokenizer(ref)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn = generate(model, tok, ["What is 2 + 3?"], n=2, temperature=1.0, top_p=1.0, max_new_tokens=6,
                         seed=0, batch_size=2)
    assert len(drawn[0]) == 2
    about_cache = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert about_cache == []
    expected = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"
    from chainforge.compat import cache_kwarg
    assert cache_kwarg(model) == expected
