"""`koemb run` end to end on a tiny Qwen3 with the real tokenizer; resume; validate; the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from koemb.cli import main
from koemb.config import validate_model
from koemb.errors import UserError
from koemb.model.prune import bpe_parts, choose_kept, count_new_token_uses
from koemb.model.prune_curve import prune_curve
from koemb.train.pipeline import PipelineConfig, training_sources, final_step, load_pipeline, run_pipeline, validate_pipeline

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config() -> dict:
    stage = {"data": [{"path": "builtin:ko-sample", "limit": 200}], "lr": 1e-3, "steps": 2, "batch_size": 4, "max_length": 32}
    return {
        "base_model": "builtin:tiny-qwen3",
        "max_seq_length": 64,
        "tokenizer": {"train_donor_vocab_size": 1000, "corpus": [{"path": "builtin:ko-sample", "limit": 300}], "settings": {"max_new_tokens": 100}},
        "evaluation": {"suite": {"tasks": [{"name": "separation", "type": "separation", "limit": 10}]}},
        "runtime": {"progress": False},
        "stages": [
            {"name": "rows", "train": "new_rows", "objective": {"infonce": {}, "distill": {}}, **stage},
            {"name": "lora", "train": {"kind": "lora", "r": 2, "alpha": 4, "dropout": 0.1}, "objective": "infonce", **stage},
        ],
    }


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_run_writes_the_layout_keeps_old_rows_and_resumes(tmp_path):
    cfg = validate_model(PipelineConfig, small_config(), "test")
    out = tmp_path / "out"
    run_pipeline(cfg, out)

    for p in ("config.yaml", "base/config.json", "tokenizer/expansion.json", "expanded/expansion.json", "stages/rows/model.safetensors",
              "stages/lora/model.safetensors", "final/model.safetensors", "eval/results.json", "eval/report.md", "logs/train.jsonl",
              "logs/training.png"):
        assert (out / p).is_file(), p
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    cached = load_file(str(out / "cache" / "teacher.safetensors"))["embeddings"]
    texts = json.loads((out / "cache" / "teacher.texts.json").read_text(encoding="utf-8"))
    assert len(texts) == cached.shape[0] > 0
    assert load_pipeline(out / "config.yaml") == cfg  # the resolved config is the same schema, same values
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["s00-rows-step0000002", "s01-lora-step0000002"]
    for folder in ("expanded", "stages/rows", "stages/lora", "final"):
        assert not [p for p in (out / folder).rglob("*") if p.suffix == ".pt" or ".tmp" in p.name], folder
    results = json.loads((out / "eval" / "results.json").read_text())
    labels = set(results.get("results", results))
    assert {"base", "expanded", "rows", "final"} <= labels, labels

    first_new = json.loads((out / "expanded" / "expansion.json").read_text())["first_new_id"]
    exp, rows, lora = _weights(out / "expanded"), _weights(out / "stages" / "rows"), _weights(out / "stages" / "lora")
    emb = "embed_tokens.weight"
    assert torch.equal(rows[emb][:first_new], exp[emb][:first_new])
    assert not torch.equal(rows[emb][first_new:], exp[emb][first_new:])
    assert set(lora) == set(exp) and not torch.equal(lora["layers.0.self_attn.q_proj.weight"], rows["layers.0.self_attn.q_proj.weight"])

    # `koemb train`: the stages only, from the expanded model, through the CLI.
    cfg_file = tmp_path / "small.yaml"
    cfg_file.write_text(yaml.safe_dump(small_config(), allow_unicode=True))
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "t"), "--model", str(out / "expanded"), "--set", "stages.1.steps=1"]) == 0
    assert torch.equal(_weights(tmp_path / "t" / "stages" / "rows")[emb], rows[emb])  # same stage, same weights
    assert not (tmp_path / "t" / "expanded").exists() and (tmp_path / "t" / "stages" / "lora" / "model.safetensors").is_file()

    # An interrupted run: the last stage's folder and everything after it are gone.
    final_before = _weights(out / "final")
    import shutil

    for gone in ("stages/lora", "final", "eval"):
        shutil.rmtree(out / gone)
    run_pipeline(cfg, out, resume=True)
    final_after = _weights(out / "final")
    assert all(torch.equal(final_before[k], final_after[k]) for k in final_before)

    changed = validate_model(PipelineConfig, {**small_config(), "stages": small_config()["stages"][:1]}, "test")
    with pytest.raises(UserError, match="config differs"):
        run_pipeline(changed, out, resume=True)
    with pytest.raises(UserError, match="--overwrite"):
        run_pipeline(cfg, out)


def test_shipped_configs_validate(qwen_dir):
    demo = load_pipeline(REPO / "configs" / "demo.yaml")
    assert [s.train.kind for s in demo.stages] == ["new_rows", "new_rows", "new_rows", "all_rows", "lora", "lora"]
    validate_pipeline(demo, "demo.yaml")
    seed = load_pipeline(REPO / "configs" / "qwen3-embedding-0.6b-ko.yaml", [f"base_model={qwen_dir}"])
    assert [s.train.kind for s in seed.stages] == ["new_rows", "new_rows", "new_rows", "all_rows", "lora", "lora"]
    assert [(s.train.r, s.train.alpha) for s in seed.stages[4:]] == [(64, 128), (32, 64)]
    assert [s.lr for s in seed.stages] == [3e-4, 2e-4, 1e-4, 5e-5, 5e-5, 3e-5]
    notes = validate_pipeline(seed, "seed.yaml")  # LoRA targets checked on the real config's skeleton
    assert notes and all("hub data set" in n for n in notes)
    bad = load_pipeline(REPO / "configs" / "qwen3-embedding-0.6b-ko.yaml", [f"base_model={qwen_dir}", "stages.5.train.target_modules=[qkv_proj]"])
    with pytest.raises(UserError, match=r"stages\.5\.train\.target_modules.*qkv_proj"):
        validate_pipeline(bad, "seed.yaml")


def test_the_e5_twin_trains_exactly_the_profiles_stages_that_need_no_new_rows():
    # The twin (no new tokens) is the study's control: its result only means "what the data is worth" while its
    # stages are the profile's, so an edit to one without the other fails here.
    profile = load_pipeline(REPO / "configs" / "me5-small-ko.yaml")
    twin = load_pipeline(REPO / "configs" / "me5-small-twin.yaml")
    assert twin.tokenizer is None and twin.expanded_model == twin.base_model == profile.base_model
    assert [s.name for s in twin.stages] == ["stage2-all-rows", "stage4-lora", "stage5-cosent"]
    assert twin.stages == [s for s in profile.stages if s.name in {"stage2-all-rows", "stage4-lora", "stage5-cosent"}]
    assert twin.interpolate == profile.interpolate and twin.evaluation == profile.evaluation
    assert twin.prune is None


def test_cli_validate_names_the_bad_field(tmp_path, capsys):
    cfg = small_config()
    cfg["stages"][0]["lerning_rate"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages.0.lerning_rate" in err
    cfg["stages"][0].pop("lerning_rate")
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert main(["validate", "--config", str(path)]) == 0
    assert main(["validate", "--config", str(path), "--set", "stages.1.train=some_rows"]) == 2
    assert "stages.1.train" in capsys.readouterr().err
    assert main(["validate", "--config", str(path), "--set", "stages.0.data.0.path=/nope.jsonl"]) == 2
    assert "stages.0.data.0.path" in capsys.readouterr().err
    # A scored file (pairs with `score`) in a stage without `cosent`: named before anything runs.
    scored = tmp_path / "scored.jsonl"
    scored.write_text('{"query": "가", "positive": "나", "score": 4.0}\n', encoding="utf-8")
    assert main(["validate", "--config", str(path), "--set", f"stages.1.data.0.path={scored}"]) == 2
    assert "stages.1.data.0" in (err := capsys.readouterr().err) and "add cosent" in err
    assert main(["validate", "--config", str(path), "--set", f"stages.1.data.0.path={scored}", "--set", "stages.1.objective=[cosent]"]) == 0
    # refit: its data is checked like a stage's, under its own name, and the summary lists it after the stages.
    cfg["refit"] = {"name": "refit", "train": "new_rows", "objective": {"distill": {}}, "data": [{"path": "builtin:ko-sample"}], "lr": 1e-3, "steps": 1}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    capsys.readouterr()
    assert main(["validate", "--config", str(path)]) == 0
    assert "then refit: refit (new_rows, distill)" in " ".join(capsys.readouterr().out.split())
    assert main(["validate", "--config", str(path), "--set", "refit.data.0.path=/nope.jsonl"]) == 2
    assert "refit.data.0.path" in capsys.readouterr().err


def test_prune_makes_final_keep_the_first_or_the_most_used_new_tokens(tmp_path):
    from transformers import AutoTokenizer

    from koemb.resources import KO_SAMPLE

    raw = small_config()
    raw["stages"] = raw["stages"][:1]
    raw["prune"] = {"keep_new_tokens": 20}
    out = run_pipeline(validate_model(PipelineConfig, raw, "test"), tmp_path / "out")
    last, final = out / "stages" / "rows", out / "final"
    n_last = json.loads((last / "expansion.json").read_text())["added"]
    info = json.loads((final / "expansion.json").read_text())
    assert n_last > 20 and info["added"] == 20 and info["pruned"]["from"] == n_last
    cut = info["first_new_id"] + 20
    emb = "embed_tokens.weight"
    w_last, w_final = _weights(last)[emb], _weights(final)[emb]
    assert torch.equal(w_final, w_last[: w_final.shape[0]]) and w_final.shape[0] == max(cut, info["rows"]["before"])
    text = " ".join(KO_SAMPLE.read_text(encoding="utf-8").splitlines()[:50])
    ids = AutoTokenizer.from_pretrained(str(final))(text)["input_ids"]
    assert max(ids) < cut and any(i >= info["first_new_id"] for i in ids)
    # final differs from the last stage, so the last stage is evaluated as a baseline of its own.
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {"rows", "final"} <= set(results.get("results", results))

    # rank_by: usage counts on the run's training text (the tokenizer corpus and the stage's data).
    raw["prune"] = {"keep_new_tokens": 20, "rank_by": "usage"}
    cfg = validate_model(PipelineConfig, raw, "test")
    final_step(cfg, out, last, str(out / "base-not-read"))
    info = json.loads((final / "expansion.json").read_text())
    assert info["pruned"]["rank_by"] == "usage" and info["pruned"]["corpus_uses"] > 0
    sources = {k: list(v) for k, v in training_sources(cfg).items()}  # the corpus entry and the stage's (another limit)
    assert [len(t) for t in sources.values()] == [300, 200] and info["pruned"]["corpus"] == list(sources)
    # The kept tokens are those the last stage's tokenizer emits most on those texts (ties: expansion order),
    # with the merge parts this BPE needs (choose_kept's closure, tested on its own in test_model_prune.py).
    exp_last = json.loads((last / "expansion.json").read_text())
    first = exp_last["first_new_id"]
    counts = count_new_token_uses(AutoTokenizer.from_pretrained(str(last)), [t for v in sources.values() for t in v], first)
    order = [t["id"] for t in exp_last["tokens"]]
    ranked = sorted(order, key=lambda i: (-counts[i], order.index(i)))
    kept = choose_kept(ranked, 20, first, bpe_parts(json.loads((last / "tokenizer.json").read_text())))
    assert kept != sorted(order[:20])  # the most used are not the first 20 here: the ranking is what is checked
    text_of = {t["id"]: t["text"] for t in exp_last["tokens"]}
    assert [t["text"] for t in info["tokens"]] == [text_of[i] for i in kept]
    assert [t["uses"] for t in info["tokens"]] == [counts[i] for i in kept]
    # `koemb model prune-curve --config` counts on the same texts: its point at 20 is final/'s tokenizer.
    cfg_file, held_out, curve = tmp_path / "c.yaml", tmp_path / "held_out.txt", tmp_path / "curve.json"
    cfg_file.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    held = KO_SAMPLE.read_text(encoding="utf-8").splitlines()[300:400]
    held_out.write_text("\n".join(held) + "\n", encoding="utf-8")
    assert main(["model", "prune-curve", "--model", str(last), "--config", str(cfg_file), "--text", str(held_out),
                 "--keep", "20", "--out", str(curve)]) == 0
    point = json.loads(curve.read_text(encoding="utf-8"))["points"][0]
    pruned_tok = AutoTokenizer.from_pretrained(str(final))
    assert point["tokens"]["held_out"] == sum(len(r) for r in pruned_tok([h for h in held if h.strip()], add_special_tokens=False)["input_ids"])

    # rank_by: fidelity runs the last stage on occurrences in the same texts and records each kept token's damage.
    raw["prune"] = {"keep_new_tokens": 20, "rank_by": "fidelity"}
    final_step(validate_model(PipelineConfig, raw, "test"), out, last, str(out / "base-not-read"))
    info = json.loads((final / "expansion.json").read_text())
    assert info["pruned"]["rank_by"] == "fidelity" and info["added"] == 20
    measured = [t["damage"] for t in info["tokens"] if "damage" in t]
    assert len(measured) >= 15 and all(0 <= d < 2 for d in measured)

    # target_reduction: the fewest multiples of `step` that keep the held-out text that much shorter, as the
    # curve measures it; final/ keeps exactly that many (ranked by use) and records the curve.
    raw["prune"] = {"target_reduction": 1.0, "texts": [{"path": str(held_out)}], "rank_by": "usage", "step": 10}
    cfg = validate_model(PipelineConfig, raw, "test")
    want = prune_curve(last, [*range(10, n_last, 10), n_last], {"h": [h for h in held if h.strip()]}, rank_by="usage",
                       sources=training_sources(cfg))
    at30 = 100 * next(p.reduction["h"] for p in want.points if p.keep == 30)
    raw["prune"]["target_reduction"] = at30
    expected = want.smallest_keep(at30 / 100)
    assert expected is not None and expected <= 30
    final_step(validate_model(PipelineConfig, raw, "test"), out, last, str(out / "base-not-read"))
    info = json.loads((final / "expansion.json").read_text())
    assert info["added"] == expected and info["pruned"]["rank_by"] == "usage"
    recorded = json.loads((final / "prune_curve.json").read_text())
    assert recorded["target"]["smallest_keep"] == expected and len(recorded["points"]) == len(want.points)
    # A saving only all the new tokens give (or none): final/ keeps them all, and says so in the curve.
    raw["prune"]["target_reduction"] = 99.0
    final_step(validate_model(PipelineConfig, raw, "test"), out, last, str(out / "base-not-read"))
    assert json.loads((final / "expansion.json").read_text())["added"] == n_last
    assert json.loads((final / "prune_curve.json").read_text())["target"]["smallest_keep"] is None

    raw["prune"] = {"keep_new_tokens": 100}  # = tokenizer.settings.max_new_tokens: nothing to prune
    with pytest.raises(UserError, match=r"prune\.keep_new_tokens \(100\) must be below tokenizer\.settings\.max_new_tokens"):
        validate_model(PipelineConfig, raw, "test")
    for bad, message in [
        ({"keep_new_tokens": 20, "target_reduction": 15.0, "texts": [{"path": str(held_out)}]}, "exactly one of `keep_new_tokens`"),
        ({"target_reduction": 15.0}, "needs `texts`"),
        ({"keep_new_tokens": 20, "texts": [{"path": str(held_out)}]}, "only with `target_reduction`"),
        ({"target_reduction": 150.0, "texts": [{"path": str(held_out)}]}, "prune.target_reduction"),
        ({"target_reduction": 15.0, "texts": [{"path": str(held_out), "weight": 2}]}, "reads only `path`"),
    ]:
        raw["prune"] = bad
        with pytest.raises(UserError, match=message):
            validate_model(PipelineConfig, raw, "test")


def test_interpolate_makes_final_the_midpoint_of_the_last_stage_and_its_anchor(tmp_path):
    raw = small_config()
    raw["prune"] = {"keep_new_tokens": 20}
    raw["interpolate"] = {"anchor": "rows", "alpha": 0.5}
    out = run_pipeline(validate_model(PipelineConfig, raw, "test"), tmp_path / "out")
    rows, lora, final = (_weights(out / p) for p in ("stages/rows", "stages/lora", "final"))
    info = json.loads((out / "final" / "expansion.json").read_text())
    assert info["added"] == 20 and info["interpolated"]["anchor"] == str(out / "stages" / "rows")
    cut = info["first_new_id"] + 20
    moved = [k for k in lora if k != "embed_tokens.weight" and not torch.equal(lora[k], rows[k])]
    assert moved  # the LoRA stage merged into the attention weights
    for k in moved:
        assert torch.allclose(final[k], (rows[k] + lora[k]) / 2, atol=1e-6), k
    emb = "embed_tokens.weight"
    n = final[emb].shape[0]
    assert n == max(cut, info["rows"]["before"]) and torch.allclose(final[emb][:cut], (rows[emb][:cut] + lora[emb][:cut]) / 2)
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {"rows", "lora", "final"} <= set(results.get("results", results))
    assert not [p for p in out.iterdir() if p.name.startswith(".final")]  # the pruned intermediate is gone

    # `expanded`: the base network and rows with the new rows at their init, so every row, new ones included,
    # is on the line (`interpolate: {anchor: base}` leaves the new rows as trained: the base has none).
    raw["interpolate"] = {"anchor": "expanded", "alpha": 0.5}
    final_step(validate_model(PipelineConfig, raw, "test"), out, out / "stages" / "lora", str(out / "base-not-read"))
    init, base, final = _weights(out / "expanded"), _weights(out / "base"), _weights(out / "final")
    info = json.loads((out / "final" / "expansion.json").read_text())
    assert info["interpolated"]["anchor"] == str(out / "expanded")
    for k in moved:
        assert torch.equal(init[k], base[k])  # the expanded model's network is the base's ...
        assert torch.allclose(final[k], (init[k] + lora[k]) / 2, atol=1e-6), k  # ... so it is the same line there
    new = slice(info["first_new_id"], cut)  # `rank_by: order` keeps the first 20 at their ids
    assert not torch.allclose(lora[emb][new], init[emb][new])  # stage `rows` trained them
    assert torch.allclose(final[emb][new], (init[emb][new] + lora[emb][new]) / 2, atol=1e-6)

    raw["interpolate"] = {"anchor": "lora", "alpha": 0.5}  # the last stage is not an anchor
    with pytest.raises(UserError, match=r"interpolate\.anchor must be `base`, `expanded` or an earlier stage \(rows\); got 'lora'"):
        validate_model(PipelineConfig, raw, "test")
    raw["interpolate"] = {"anchor": "base", "alpha": 0.5}
    raw["stages"][0]["name"] = "expanded"  # a stage may not take an anchor keyword's name
    with pytest.raises(UserError, match=r"stage name 'expanded' is also an `interpolate\.anchor` keyword"):
        validate_model(PipelineConfig, raw, "test")


def test_interpolate_chooses_alpha_on_the_validation_suite(tmp_path, ko_data):
    # alpha as a list: each candidate is written and scored on `select_on` (KorSTS dev: STS + the same pairs as
    # retrieval), final/ is the best one, and the scores are kept. The choice is checked against each
    # candidate's own results.json, and final/'s weights against the interpolation at the chosen alpha.
    from koemb.eval.suite import suite_from_dict
    from koemb.train.pipeline import validation_score

    dev = str(ko_data / "korsts" / "sts-dev.tsv")
    select_on = {"tasks": [{"name": "dev-sts", "type": "sts", "reader": "korsts", "path": dev, "limit": 60},
                           {"name": "dev-retrieval", "type": "retrieval", "reader": "korsts", "path": dev, "limit": 20},
                           {"name": "separation", "type": "separation", "limit": 10}]}
    raw = small_config()
    raw["interpolate"] = {"anchor": "rows", "alpha": [0.0, 1.0, 0.5], "select_on": select_on}
    out = run_pipeline(validate_model(PipelineConfig, raw, "test"), tmp_path / "out")
    report = out / "eval" / "interpolate-alpha"
    selection = json.loads((report / "selection.json").read_text())
    assert selection == json.loads((out / "final" / "interpolate_selection.json").read_text())
    suite = suite_from_dict(select_on)
    scores = {}
    for a in ("0", "1", "0.5"):
        res = json.loads((report / f"alpha-{a}" / "results.json").read_text())["results"][f"alpha-{a}"]
        scores[a] = validation_score(res, suite)
        assert scores[a] == pytest.approx((res["dev-sts"]["spearman"] + res["dev-retrieval"]["ndcg@10"]) / 2)
    assert selection["scores"] == pytest.approx(scores)
    assert len(set(scores.values())) == 3  # the candidates differ, so the choice means something
    chosen = max(scores, key=scores.get)
    assert selection["chosen"] == float(chosen)
    rows, lora, final = (_weights(out / p) for p in ("stages/rows", "stages/lora", "final"))
    a = float(chosen)
    moved = [k for k in lora if k != "embed_tokens.weight" and not torch.equal(lora[k], rows[k])]
    assert moved and all(torch.allclose(final[k], rows[k] + a * (lora[k] - rows[k]), atol=1e-6) for k in moved)
    assert json.loads((out / "final" / "expansion.json").read_text())["interpolated"]["alpha"] == a
    assert not [p for p in out.iterdir() if p.name.startswith(".final")]  # the losing candidates are gone

    for bad, message in [
        ({"alpha": [0.5]}, "at least two candidates"),
        ({"alpha": [0.5, 0.5], "select_on": select_on}, "candidates repeat"),
        ({"alpha": [0.3, 0.7]}, "needs `select_on`"),
        ({"alpha": 0.5, "select_on": select_on}, "read only when `alpha` is a list"),
        ({"alpha": [0.3, 1.5], "select_on": select_on}, "less than or equal to 1"),
    ]:
        raw["interpolate"] = bad
        with pytest.raises(UserError, match=message):
            validate_model(PipelineConfig, raw, "test")
    raw["interpolate"] = {"alpha": [0.3, 0.7], "select_on": {"tasks": [{"name": "separation", "type": "separation"}]}}
    with pytest.raises(UserError, match=r"interpolate\.select_on: the suite has no retrieval or STS task"):
        validate_pipeline(validate_model(PipelineConfig, raw, "test"))


def test_refit_fits_the_new_rows_of_final_to_final_read_with_the_base_tokenizer(tmp_path):
    # refit: after prune + interpolate, more stages on final/, whose teacher is final/'s own weights with the base
    # tokenizer. Only the new rows may move; final/ is the last pass's output; the model before it is a baseline.
    # As a list [a, b], two passes (each its own optimizer and lr schedule, one teacher): the e5 study measured this
    # shape by hand (`koemb train` twice, the second from the first's output), and the pipeline must compute the
    # same weights, so that measurement is the configured run's.
    from transformers import AutoTokenizer

    from koemb.train.pipeline import refit_teacher

    raw = small_config()
    raw["prune"] = {"keep_new_tokens": 20}
    raw["interpolate"] = {"anchor": "base", "alpha": 0.5}
    rows = {"train": "new_rows", "objective": {"distill": {"relational": 1.0}}, "data": [{"path": "builtin:ko-sample", "limit": 200}],
            "lr": 1e-2, "steps": 3, "batch_size": 4, "max_length": 32}
    raw["refit"] = [{"name": "refit", **rows, "seed": 5}, {"name": "refit-more", **rows, "seed": 6}]
    cfg = validate_model(PipelineConfig, raw, "test")
    assert [w for w, _ in cfg.refit_stages()] == ["refit.0", "refit.1"]
    out = run_pipeline(cfg, tmp_path / "out")
    before, first, stage, after = (_weights(out / p) for p in ("refit/input", "stages/refit", "stages/refit-more", "final"))
    assert all(torch.equal(after[k], stage[k]) for k in after)
    info = json.loads((out / "final" / "expansion.json").read_text())
    new, emb = slice(info["first_new_id"], info["first_new_id"] + 20), "embed_tokens.weight"
    assert info["added"] == 20 and info["interpolated"]["alpha"] == 0.5
    assert all(torch.equal(after[k], before[k]) for k in after if k != emb)  # the network is untouched ...
    assert torch.equal(after[emb][: new.start], before[emb][: new.start])  # ... and so are the base rows
    assert not torch.equal(first[emb][new], before[emb][new]) and not torch.equal(after[emb][new], first[emb][new])  # each pass moved them
    assert not (out / "refit" / "teacher").exists() and (out / "cache" / "refit-teacher.safetensors").is_file()
    results = json.loads((out / "eval" / "results.json").read_text())["results"]
    assert {"rows", "lora", "before-refit", "refit", "final"} <= set(results)
    log = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert {r.get("stage") for r in log} >= {"rows", "lora", "refit", "refit-more"}
    assert {"s02-refit-step0000003", "s03-refit-more-step0000003"} <= {p.name for p in (out / "checkpoints").iterdir()}

    # The teacher: the same weights, the base tokenizer (whose ids are the expanded vocabulary's first ones).
    teacher = refit_teacher(out / "refit" / "input", str(out / "base"), tmp_path / "teacher")
    base_tok, teacher_tok = (AutoTokenizer.from_pretrained(str(p)) for p in (out / "base", teacher))
    assert teacher_tok.get_vocab() == base_tok.get_vocab() and len(teacher_tok) == new.start
    assert all(torch.equal(w, before[k]) for k, w in _weights(teacher).items())
    assert not (teacher / "expansion.json").exists()

    # By hand: `koemb train` from refit/input with the teacher as base_model, then again from its output (renamed).
    hand = {"base_model": str(teacher), "runtime": {"progress": False}}
    for i, (start, st) in enumerate([(out / "refit" / "input", raw["refit"][0]), (tmp_path / "h0" / "stages" / "refit", {**raw["refit"][1], "name": "more"})]):
        cfg_file = tmp_path / f"hand{i}.yaml"
        cfg_file.write_text(yaml.safe_dump({**hand, "expanded_model": str(start), "stages": [st]}, allow_unicode=True))
        assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / f"h{i}")]) == 0
    assert all(torch.equal(_weights(tmp_path / "h0" / "stages" / "refit")[k], first[k]) for k in first)
    assert all(torch.equal(_weights(tmp_path / "h1" / "stages" / "more")[k], after[k]) for k in after)

    # One mapping is a list of one, named `refit` in messages; names differ from each other and from the stages'.
    raw["refit"] = {"name": "refit", **rows}
    assert [w for w, _ in validate_model(PipelineConfig, raw, "test").refit_stages()] == ["refit"]
    raw["refit"]["objective"] = "infonce"
    with pytest.raises(UserError, match="refit.objective: the refit learns from final/ read with the base tokenizer"):
        validate_model(PipelineConfig, raw, "test")
    raw["refit"] = [{"name": "refit", **rows}, {"name": "lora", **rows}]
    with pytest.raises(UserError, match="refit.1.name 'lora' is a stage's name too"):
        validate_model(PipelineConfig, raw, "test")
    raw["refit"] = [{"name": "refit", **rows}, {"name": "refit", **rows}]
    with pytest.raises(UserError, match="refit: stage names must be unique"):
        validate_model(PipelineConfig, raw, "test")
    raw["refit"] = []
    with pytest.raises(UserError, match="refit: give one stage or a non-empty list"):
        validate_model(PipelineConfig, raw, "test")


def test_a_bert_family_stage_saves_only_the_checkpoints_weights(tmp_path):
    # AutoModel gives BERT / XLM-R a pooler head that e5's checkpoint lacks. Loaded as-is for a stage, it was
    # randomly initialised and saved with the trained stage as if it were part of the model (session 10 found
    # it in the e5 study's folders). The REAL multilingual-e5-small, one all-rows step through `koemb train`.
    from test_encoder import me5_small_dir

    base = me5_small_dir()
    stage = {"name": "rows", "train": "all_rows", "objective": "infonce", "data": [{"path": "builtin:ko-sample", "limit": 40}],
             "lr": 1e-4, "steps": 1, "batch_size": 2, "max_length": 16}
    cfg_file = tmp_path / "e5.yaml"
    raw = {"base_model": str(base), "expanded_model": str(base), "runtime": {"progress": False}, "stages": [stage]}
    cfg_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "t")]) == 0
    before, after = _weights(base), _weights(tmp_path / "t" / "stages" / "rows")
    assert not [k for k in before if "pooler" in k]  # the premise: e5 ships no pooler
    assert set(after) == set(before)
    emb = "embeddings.word_embeddings.weight"
    assert not torch.equal(after[emb], before[emb])  # the step did train


def test_koemb_train_gives_a_dual_segmentation_stage_the_base_tokenizer(tmp_path, qwen_dir):
    """No distillation teacher in this config: the base model's tokenizer is loaded for the second reading alone."""
    from tests.test_train import tiny_expanded, write_data

    model = tiny_expanded(tmp_path / "m", qwen_dir)
    pairs, _ = write_data(tmp_path)
    stage = {"name": "dual", "train": "new_rows", "objective": "infonce", "dual_segmentation": {"agree": 1.0}, "data": [{"path": str(pairs)}],
             "lr": 1e-2, "steps": 2, "batch_size": 4, "max_length": 32}
    cfg = {"base_model": str(qwen_dir), "expanded_model": str(model), "runtime": {"progress": False}, "stages": [stage]}
    cfg_file = tmp_path / "dual.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    out = tmp_path / "out"
    assert main(["train", "--config", str(cfg_file), "--out", str(out)]) == 0
    rec = [json.loads(l) for l in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert all({"loss_agree", "base_loss_infonce"} <= set(r) for r in rec if "loss" in r)
    assert load_pipeline(out / "config.yaml").stages[0].dual_segmentation.agree == 1.0
    assert (out / "stages" / "dual" / "model.safetensors").is_file() and not (out / "cache").exists()
