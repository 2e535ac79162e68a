"""The loop on a tiny Qwen3 with the real tokenizer: trainable setups, LoRA merge, GradCache, schedules.

Helpers here (`tiny_expanded`, `write_data`, `run_stage`) are imported by the other train tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModel, AutoTokenizer

from koemb.model.tiny import build_tiny_qwen3
from koemb.resources import KO_SAMPLE
from koemb.train.checkpoint import list_checkpoints, load_checkpoint
from koemb.train.data import Source
from koemb.train.encode import embed, read_spec, tokenize
from koemb.train.loop import Runtime, source_names, train_stage
from koemb.train.setups import Lora
from koemb.train.stage import SCHEDULES, StageConfig

NEW_WORDS = ["유산", "병원", "생각", "사람", "우리", "있습니다", "그리고", "하지만"]
FIRST_NEW = 151669



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, qwen_dir) -> Path:
    return tiny_expanded(tmp_path_factory.mktemp("tiny"), qwen_dir)


def tiny_expanded(root: Path, qwen_dir: Path) -> Path:
    """A tiny random Qwen3 whose tokenizer has 8 Korean words added (ids 151669..151676)."""
    tok = AutoTokenizer.from_pretrained(str(qwen_dir))
    tok.add_tokens(NEW_WORDS)
    tok.save_pretrained(root / "tok")
    out = build_tiny_qwen3(root / "model", tokenizer_dir=root / "tok", max_seq_length=64)
    (out / "expansion.json").write_text(json.dumps({"first_new_id": FIRST_NEW, "tokens": [{"id": FIRST_NEW + i, "text": w, "kind": "target"} for i, w in enumerate(NEW_WORDS)]}))
    return out


def write_data(root: Path, n: int = 48) -> tuple[Path, Path]:
    """(pairs.jsonl, text.txt) from the shipped Korean sample; answers repeat (false negatives)."""
    lines = [l.strip() for l in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if len(l.strip()) > 40][: 2 * n]
    pairs = root / "pairs.jsonl"
    with pairs.open("w", encoding="utf-8") as fh:
        for i in range(n):
            a = lines[i][:120]
            fh.write(json.dumps({"query": a[:40], "positive": a[40:], "negative": lines[i + n][:60], "group": str(i % (n - 3))}, ensure_ascii=False) + "\n")
    text = root / "text.txt"
    text.write_text("\n".join(l[:200] for l in lines[n:]) + "\n", encoding="utf-8")
    return pairs, text


def write_scored(root: Path, n: int = 12) -> Path:
    """scored.jsonl: sentence pairs from the Korean sample with graded scores 0-5 (for `cosent`)."""
    lines = [l.strip() for l in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if len(l.strip()) > 40][:n]
    path = root / "scored.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i, a in enumerate(lines):
            fh.write(json.dumps({"query": a[:40], "positive": a[10:60], "score": float(i % 6)}, ensure_ascii=False) + "\n")
    return path


def stage(data: list[Path], **kw) -> StageConfig:
    base = {"name": "s", "train": "new_rows", "data": [{"path": str(p)} for p in data], "lr": 1e-2, "batch_size": 4, "max_length": 48, "steps": 3, "weight_decay": 0.1, "warmup_ratio": 0.0}
    return StageConfig.model_validate({**base, **kw})


def run_stage(folder: Path, cfg: StageConfig, ckpt: Path, *, resume: bool = False, stop_after: int | None = None, checkpoint_every: int = 0, teacher=None, gc: bool = False):
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(folder))
    rt = Runtime(checkpoint_dir=ckpt, log_dir=ckpt.parent / "logs", checkpoint_every=checkpoint_every, keep_checkpoints=2, progress=False, stop_after_steps=stop_after, gradient_checkpointing=gc)
    out = train_stage(model, tok, cfg, stage_index=0, spec=read_spec(folder, cfg.max_length), first_new_id=FIRST_NEW, runtime=rt, accelerator=Accelerator(cpu=True), teacher=teacher, resume=resume)
    return out, tok


def test_new_rows_keeps_old_rows_bit_identical_with_weight_decay(tiny_dir, tmp_path):
    pairs, text = write_data(tmp_path)
    before = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32).state_dict()
    cfg = stage([pairs, text], weight_decay=0.5)
    model, _ = run_stage(tiny_dir, cfg, tmp_path / "ckpt")
    after = model.state_dict()
    emb = "embed_tokens.weight"
    assert torch.equal(after[emb][:FIRST_NEW], before[emb][:FIRST_NEW])
    assert not torch.equal(after[emb][FIRST_NEW:], before[emb][FIRST_NEW:]), "new rows did not train"
    for k in before:
        if k != emb:
            assert torch.equal(after[k], before[k]), k
    # Optimizer state exists for the new rows only: two (8, 64) moments, not (151677, 64).
    state = load_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])
    assert list(state["trainable"]) == ["embed_tokens.new"]
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values() if t.ndim == 2]
    assert moments and all(t.shape == (len(NEW_WORDS), 64) for t in moments)
    # The log has what the issue asks for.
    rec = [json.loads(l) for l in (tmp_path / "logs" / "train.jsonl").read_text().splitlines()]
    steps, end = rec[:-1], rec[-1]  # one record per step, then the stage summary
    assert len(steps) == 3 and {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(steps[-1])
    assert end["event"] == "stage_end" and end["skipped_bad_batches"] == 0
    # One micro-batch per step, drawn from one source: the per-source mean is that step's loss.
    for r in steps:
        ((name, value),) = r["source_loss"].items()
        assert name in {pairs.stem, text.stem} and value == pytest.approx(r["loss"])


def test_source_names_are_stems_unless_two_collide():
    a, b = Source("d/x/pairs.jsonl", 1.0, []), Source("d/y/text.txt", 1.0, [])
    assert source_names([a, b]) == ["pairs", "text"]
    c = Source("d/z/pairs.jsonl", 1.0, [])
    assert source_names([a, c]) == ["d/x/pairs.jsonl", "d/z/pairs.jsonl"]


def test_all_rows_moves_old_rows_and_nothing_else(tiny_dir, tmp_path):
    pairs, _ = write_data(tmp_path)
    before = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32).state_dict()
    model, _ = run_stage(tiny_dir, stage([pairs], train="all_rows"), tmp_path / "ckpt")
    after = model.state_dict()
    # Weight decay touches every row of a trainable matrix: exactly why new_rows is its own parameter.
    assert not torch.equal(after["embed_tokens.weight"][:FIRST_NEW], before["embed_tokens.weight"][:FIRST_NEW])
    assert all(torch.equal(after[k], before[k]) for k in before if k != "embed_tokens.weight")


def _embs(model, tok, folder, texts):
    spec = read_spec(folder, 48)
    with torch.no_grad():
        return embed(model.eval(), tokenize(tok, texts, spec), spec)


def test_lora_only_lora_weights_get_gradients_and_merge_matches(tiny_dir, tmp_path):
    pairs, _ = write_data(tmp_path)
    model = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = Lora(r=4, alpha=8, dropout=0.1).prepare(model, FIRST_NEW)
    cfg = stage([pairs], train={"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1}, lr=5e-2, steps=4)
    # Train through the loop's pieces: a few steps so that lora_B is far from zero.
    opt = torch.optim.AdamW(list(prepared.trainable().values()), lr=5e-2)
    spec = read_spec(tiny_dir, 48)
    texts = [json.loads(l)["positive"] for l in pairs.read_text().splitlines()][:6]
    for _ in range(3):
        prepared.module.train()
        e = embed(prepared.module, tokenize(tok, texts, spec), spec)
        loss = cfg.objective.infonce.loss({"query": e, "positive": e.flip(0)}, type("B", (), {"positive_keys": texts[::-1], "negative_keys": []})(), None)
        loss.backward()
        with_grad = [n for n, p in prepared.module.named_parameters() if p.grad is not None]
        assert with_grad and all("lora_" in n for n in with_grad)
        opt.step()
        opt.zero_grad()
    unmerged = _embs(prepared.module, tok, tiny_dir, texts)
    merged_model = prepared.finish()
    merged = _embs(merged_model, tok, tiny_dir, texts)
    assert (merged - unmerged).abs().max().item() <= 1e-5
    after = merged_model.state_dict()
    assert set(after) == set(before), "merge_and_unload must give the plain model back"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)


def test_lora_stage_through_the_loop_and_bad_target_names(tiny_dir, tmp_path):
    pairs, _ = write_data(tmp_path)
    cfg = stage([pairs], train={"kind": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, steps=2)
    model, _ = run_stage(tiny_dir, cfg, tmp_path / "ckpt")
    assert not any("lora" in k for k in model.state_dict())
    from koemb.errors import UserError

    with pytest.raises(UserError, match="qkv"):
        Lora(target_modules=["qkv"]).check_targets(model)


def test_lora_on_chosen_layers_changes_only_those_layers(tiny_dir, tmp_path):
    from koemb.errors import UserError

    pairs, _ = write_data(tmp_path)
    before = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32).state_dict()
    cfg = stage([pairs], train={"kind": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "layers": [0]},
                lr=5e-2, steps=3)
    model, _ = run_stage(tiny_dir, cfg, tmp_path / "ckpt")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"layers.0.self_attn.q_proj.weight", "layers.0.self_attn.v_proj.weight"}
    with pytest.raises(UserError, match=r"train.layers: \[7\] out of range; the model has layers 0..1"):
        Lora(target_modules=["q_proj"], layers=[7]).check_targets(model)


def test_lora_targets_may_be_dotted_suffixes_as_peft_reads_them(tiny_dir, tmp_path):
    # e5 (BERT) has three linear layers called 'dense' per block; 'attention.output.dense' names one of them. The
    # tiny Qwen3's names are unique, so the same rule is checked with 'self_attn.q_proj' / 'mlp.down_proj'.
    from koemb.errors import UserError

    pairs, _ = write_data(tmp_path)
    before = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32).state_dict()
    train = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": ["self_attn.q_proj", "mlp.down_proj"], "layers": [1]}
    model, _ = run_stage(tiny_dir, stage([pairs], train=train, lr=5e-2, steps=3), tmp_path / "ckpt")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"layers.1.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight"}
    # A suffix must end at a dot: 'f_attn.q_proj' is not 'self_attn.q_proj', and no MLP has a q_proj.
    for bad in ("f_attn.q_proj", "mlp.q_proj"):
        with pytest.raises(UserError, match=rf"\['{bad}'\] match no linear layer.*e\.g\. 'layers\.0\.self_attn\.q_proj'"):
            Lora(target_modules=[bad]).check_targets(model)


def _only_q_v_changed(changed: set[str]) -> bool:
    return bool(changed) and all(("q_proj" in k or "v_proj" in k) for k in changed)


def _mlp_and_attention_changed(changed: set[str]) -> bool:
    # Every matrix trains, the MLPs too (which a LoRA on attention leaves alone).
    return {"layers.0.mlp.down_proj.weight", "layers.1.self_attn.o_proj.weight"} <= changed


@pytest.mark.parametrize(
    ("train", "in_checkpoint", "network_check"),
    [
        ({"kind": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "new_rows_lr": 5e-2}, "lora_",
         _only_q_v_changed),
        ({"kind": "full", "new_rows_lr": 5e-2}, "mlp.down_proj.weight", _mlp_and_attention_changed),
    ],
    ids=["lora", "full"],
)
def test_new_rows_train_beside_the_network_at_their_own_lr_and_resume(tiny_dir, tmp_path, train, in_checkpoint, network_check):
    pairs, text = write_data(tmp_path)
    before = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32).state_dict()
    cfg = stage([pairs, text], train=train, lr=1e-3, steps=4, weight_decay=0.5)
    # Stop after 2 steps (a simulated crash), then resume: the checkpoint holds the network's part AND the new rows.
    assert run_stage(tiny_dir, cfg, tmp_path / "ckpt", stop_after=2, checkpoint_every=1)[0] is None
    state = load_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])
    rows = [n for n in state["trainable"] if n.endswith("embed_tokens.new")]
    assert len(rows) == 1 and not any(n.endswith("embed_tokens.base.weight") for n in state["trainable"])
    assert any(in_checkpoint in n for n in state["trainable"]), f"the network's trained part ({in_checkpoint}) is not saved"
    # Two optimizer groups at their peak lrs (the scheduler's initial_lr): the network's and the rows'.
    assert sorted(g["initial_lr"] for g in state["optimizer"]["param_groups"]) == [1e-3, 5e-2]
    model, _ = run_stage(tiny_dir, cfg, tmp_path / "ckpt", resume=True, checkpoint_every=1)
    after = model.state_dict()
    assert set(after) == set(before), "any LoRA merged and the rows written back: the plain model again"
    emb = "embed_tokens.weight"
    assert torch.equal(after[emb][:FIRST_NEW], before[emb][:FIRST_NEW]), "old rows must not move (weight decay 0.5)"
    assert not torch.equal(after[emb][FIRST_NEW:], before[emb][FIRST_NEW:]), "new rows did not train"
    assert network_check({k for k in before if k != emb and not torch.equal(before[k], after[k])})
    from koemb.errors import UserError

    unexpanded = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32)
    with pytest.raises(UserError, match="new_rows_lr needs an expanded model"):
        cfg.train.prepare(unexpanded, None)


def test_grad_cache_gives_the_same_gradients(tiny_dir, tmp_path):
    pairs, _ = write_data(tmp_path)
    grads = []
    for chunk in (None, 3):
        cfg = stage([pairs], train="full", steps=1, batch_size=6, grad_cache_chunk=chunk)
        model = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(tiny_dir))
        from koemb.train.data import collate, read_examples
        from koemb.train.loop import _micro_step

        batch = collate(read_examples(pairs)[:6], "", 0, 0)
        acc = Accelerator(cpu=True)
        _micro_step(model, batch, tok, read_spec(tiny_dir, 48), cfg, None, acc, 1.0, sync=True)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_schedules_warm_up_then_decay():
    cos = [SCHEDULES["cosine"](s, 2, 10) for s in range(10)]
    assert cos[0] == 0.5 and cos[1] == 1.0 and cos[2] == 1.0 and cos[-1] < 0.05
    assert all(a >= b for a, b in zip(cos[2:], cos[3:]))


def test_stage_config_errors_name_the_field():
    from koemb.config import validate_model
    from koemb.errors import UserError

    with pytest.raises(UserError, match="train"):
        validate_model(StageConfig, {"name": "x", "train": "some_rows", "data": [{"path": "a"}], "lr": 1, "steps": 1}, "cfg.yaml")
    with pytest.raises(UserError, match="exactly one of"):
        validate_model(StageConfig, {"name": "x", "train": "full", "data": [{"path": "a"}], "lr": 1}, "cfg.yaml")
    with pytest.raises(UserError, match="temprature"):
        validate_model(StageConfig, {"name": "x", "train": "full", "data": [{"path": "a"}], "lr": 1, "steps": 1, "objective": {"infonce": {"temprature": 1}}}, "cfg.yaml")


def test_batch_plan_is_deterministic_weighted_and_groups_lengths():
    from koemb.train.data import plan_batches

    lengths = [[(i * 37) % 101 for i in range(400)], [5] * 50]
    a = plan_batches([400, 50], [3.0, 1.0], 8, 200, seed=1, group_by_length=lengths)
    assert a == plan_batches([400, 50], [3.0, 1.0], 8, 200, seed=1, group_by_length=lengths)
    assert a != plan_batches([400, 50], [3.0, 1.0], 8, 200, seed=2, group_by_length=lengths)
    share = sum(1 for s, _ in a if s == 0) / len(a)
    assert 0.65 < share < 0.85  # weights 3:1
    assert all(len(idx) == 8 for _, idx in a)
    # Grouped batches span a narrow range of lengths; ungrouped ones do not.
    spread = lambda plan: sum(max(lengths[0][i] for i in idx) - min(lengths[0][i] for i in idx) for s, idx in plan if s == 0)
    assert spread(a) < spread(plan_batches([400, 50], [3.0, 1.0], 8, 200, seed=1)) / 3


def test_two_spans_and_epochs():
    import random

    from koemb.train.data import two_spans

    a, b = two_spans("하나 둘 셋 넷 다섯 여섯", random.Random(0))
    assert a and b and f"{a} {b}" == "하나 둘 셋 넷 다섯 여섯"
    cfg = StageConfig.model_validate({"name": "e", "train": "full", "data": [{"path": "x"}], "lr": 1, "epochs": 2, "batch_size": 4, "grad_accumulation": 2})
    assert cfg.total_steps(n_examples=100, world_size=2) == 13  # ceil(2 * 100 / (4 * 2 * 2))


def test_gradient_checkpointing_gives_the_same_weights(tiny_dir, tmp_path):
    pairs, _ = write_data(tmp_path)
    cfg = stage([pairs], train={"kind": "lora", "r": 4, "alpha": 8}, steps=2)
    plain, _ = run_stage(tiny_dir, cfg, tmp_path / "a")
    ckpt, _ = run_stage(tiny_dir, cfg, tmp_path / "b", gc=True)
    a, b = plain.state_dict(), ckpt.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not ckpt.is_activation_checkpointing


def test_new_rows_on_an_xlmr_encoder_with_mean_pooling():
    # The e5 family (XLM-R, mean pooling): same guarantee through the model's own embedding module.
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from koemb.model.pooling import pool
    from koemb.train.setups import NewRows

    torch.manual_seed(0)
    model = XLMRobertaModel(XLMRobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64), add_pooling_layer=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = NewRows().prepare(model, 250)
    opt = torch.optim.AdamW(list(prepared.trainable().values()), lr=1e-2, weight_decay=0.5)
    ids = torch.randint(3, 300, (6, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    for _ in range(3):
        e = pool(prepared.module(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean")
        prepared.module.zero_grad()
        from koemb.train.losses import infonce

        infonce(e[:3], e[3:], torch.arange(3)).backward()
        opt.step()
    after = prepared.finish().state_dict()
    w = "embeddings.word_embeddings.weight"
    assert set(after) == set(before)
    assert torch.equal(after[w][:250], before[w][:250]) and not torch.equal(after[w][250:], before[w][250:])
    assert all(torch.equal(after[k], before[k]) for k in before if k != w)


def test_scored_and_unscored_sources_in_one_stage(tiny_dir, tmp_path):
    """cosent reads the scored source's batches, infonce the others; a source nobody reads is an error."""
    from koemb.errors import UserError
    from koemb.train.data import read_examples

    pairs, _ = write_data(tmp_path)
    scored = write_scored(tmp_path)
    cfg = stage([pairs, scored], steps=6, objective={"infonce": {}, "cosent": {"scale": 20}})
    before = AutoModel.from_pretrained(str(tiny_dir)).get_input_embeddings().weight[FIRST_NEW:].detach().clone()
    model, _ = run_stage(tiny_dir, cfg, tmp_path / "ckpt")
    assert not torch.equal(model.get_input_embeddings().weight[FIRST_NEW:], before)
    records = [json.loads(l) for l in (tmp_path / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss_infonce" in r or "loss_cosent" in r]
    # One source per batch: a step logs the objective of the source it drew, never both.
    assert any("loss_cosent" in r for r in steps) and any("loss_infonce" in r for r in steps)
    assert not any("loss_cosent" in r and "loss_infonce" in r for r in steps)

    with pytest.raises(UserError, match=r"scored\.jsonl: no objective of this stage reads it; add cosent"):
        run_stage(tiny_dir, stage([pairs, scored], objective="infonce"), tmp_path / "ckpt2")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(pairs.read_text(encoding="utf-8") + scored.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(UserError, match=r"mixed\.jsonl: 12 of 60 examples have a 'score'"):
        read_examples(mixed)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "positive": "b", "score": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:1: 'score' must be a number"):
        read_examples(bad)


def test_dual_segmentation_pulls_the_expanded_reading_towards_the_base_reading(tiny_dir, qwen_dir, tmp_path):
    """Same network, two tokenisations of the same texts: the agreement term moves the new rows so the two agree."""
    import torch.nn.functional as F

    pairs, _ = write_data(tmp_path)
    base_tok = AutoTokenizer.from_pretrained(str(qwen_dir))
    exp_tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    from koemb.train.data import read_examples

    texts = [t for e in read_examples(pairs) for t in (e.query, e.positive) if any(w in t for w in NEW_WORDS)][:16]
    spec = read_spec(tiny_dir, 48)
    enc_new, enc_base = tokenize(exp_tok, texts, spec), tokenize(base_tok, texts, spec)
    assert (enc_new["input_ids"] >= FIRST_NEW).any() and (enc_base["input_ids"] < FIRST_NEW).all()

    def disagreement(model) -> float:
        with torch.no_grad():
            e, b = embed(model.eval(), enc_new, spec), embed(model, enc_base, spec)
        return float((1 - F.cosine_similarity(e, b)).mean())

    untrained = disagreement(AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32))
    runs = {}
    # InfoNCE at a small weight: the objective is there (a stage needs one), the agreement is what is measured.
    for name, dual in (("plain", None), ("dual", {"weight": 1.0, "agree": 10.0})):
        cfg = stage([pairs], objective={"infonce": {"weight": 0.01}}, dual_segmentation=dual, steps=12, lr=3e-2)
        model = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32)
        rt = Runtime(checkpoint_dir=tmp_path / name / "ckpt", log_dir=tmp_path / name / "logs", progress=False)
        trained = train_stage(
            model, exp_tok, cfg, stage_index=0, spec=read_spec(tiny_dir, 48), first_new_id=FIRST_NEW, runtime=rt,
            accelerator=Accelerator(cpu=True), base_tokenizer=base_tok if dual else None,
        )
        runs[name] = disagreement(trained)
    rec = [json.loads(l) for l in (tmp_path / "dual" / "logs" / "train.jsonl").read_text().splitlines()][:-1]
    assert {"loss_infonce", "base_loss_infonce", "loss_agree"} <= set(rec[0])
    assert rec[-1]["loss_agree"] < rec[0]["loss_agree"]
    # Measured: 0.087 untrained, 0.104 after InfoNCE alone, 0.057 with the agreement.
    assert runs["dual"] < 0.8 * untrained and runs["dual"] < 0.8 * runs["plain"], (untrained, runs)


def test_dual_segmentation_needs_the_base_tokenizer_of_an_expanded_model(tiny_dir, tmp_path):
    from koemb.config import validate_model
    from koemb.errors import UserError

    pairs, _ = write_data(tmp_path)
    cfg = stage([pairs], objective="infonce", dual_segmentation={}, steps=1)
    model = AutoModel.from_pretrained(str(tiny_dir), dtype=torch.float32)
    exp_tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    rt = Runtime(checkpoint_dir=tmp_path / "ckpt", progress=False)
    # The expanded tokenizer as the "base": ids past the first new row would be read as old pieces.
    with pytest.raises(UserError, match=r"stages\.0\.dual_segmentation: the base tokenizer has 151677 tokens but this model's new rows start at id 151669"):
        train_stage(model, exp_tok, cfg, stage_index=0, spec=read_spec(tiny_dir, 48), first_new_id=FIRST_NEW, runtime=rt, accelerator=Accelerator(cpu=True), base_tokenizer=exp_tok)
    with pytest.raises(UserError, match="needs an expanded model"):
        train_stage(model, exp_tok, cfg, stage_index=0, spec=read_spec(tiny_dir, 48), first_new_id=None, runtime=rt, accelerator=Accelerator(cpu=True), base_tokenizer=exp_tok)
    with pytest.raises(UserError, match="grad_cache_chunk"):
        validate_model(StageConfig, {**cfg.model_dump(mode="json"), "grad_cache_chunk": 4}, "cfg.yaml")


def test_model_dropout_off_leaves_lora_dropout_and_is_restored(tmp_path):
    """On the REAL e5-small (BERT dropout 0.1): a LoRA stage distilled towards the same network. LoRA starts at
    zero, so with the network's dropout off the student IS the teacher at step 1 (loss 0) although the adapter's
    own dropout (0.5) stays on; with it on, dropout noise alone is a loss. Afterwards the model's p is back."""
    from peft import LoraConfig, get_peft_model

    from koemb.train.loop import Teacher, silence_dropout
    from test_encoder import me5_small_dir

    e5 = me5_small_dir()
    pairs, _ = write_data(tmp_path, n=8)
    tok = AutoTokenizer.from_pretrained(str(e5))
    spec = read_spec(e5, 48)
    teacher_net = AutoModel.from_pretrained(str(e5), dtype=torch.float32, add_pooling_layer=False).eval().requires_grad_(False)
    first = {}
    for off in (False, True):
        cfg = stage([pairs], train={"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.5, "target_modules": ["query", "value"]},
                    objective={"distill": {"kind": "cosine"}}, model_dropout=not off, steps=1, lr=1e-4)
        model = AutoModel.from_pretrained(str(e5), dtype=torch.float32, add_pooling_layer=False)
        rt = Runtime(checkpoint_dir=tmp_path / str(off) / "ckpt", log_dir=tmp_path / str(off) / "logs", progress=False)
        trained = train_stage(model, tok, cfg, stage_index=0, spec=spec, first_new_id=None, runtime=rt,
                              accelerator=Accelerator(cpu=True), teacher=Teacher(teacher_net, tok, spec, 8))
        first[off] = json.loads((tmp_path / str(off) / "logs" / "train.jsonl").read_text().splitlines()[0])["loss_distill"]
        drops = [m.p for m in trained.modules() if isinstance(m, torch.nn.Dropout)]
        assert drops and all(p == 0.1 for p in drops)  # restored after the stage
    assert first[True] < 1e-6 and first[False] > 1e-3, first

    # What is silenced: the network's dropout layers, not the adapter's.
    model = get_peft_model(AutoModel.from_pretrained(str(e5), dtype=torch.float32, add_pooling_layer=False),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["query"]))
    saved = silence_dropout(model)
    lora_drops = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n]
    assert lora_drops and all(m.p == 0.5 for m in lora_drops)
    assert len(saved) == sum(1 for m in model.modules() if isinstance(m, torch.nn.Dropout)) - len(lora_drops)
    assert all(m.p == 0.0 for m, _, _ in saved)
