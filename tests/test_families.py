"""Released checkpoints (runs/families) on our engine, against transformers on the same weights:
tiny random Janus and Emu3 folders built here from transformers' config classes
(tests/hf_tiny.py), loaded through `Pipeline.load`, with identical greedy answers and image
codes, and decoded pixels equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

import hf_tiny  # noqa: E402

from unimm.paradigms.base import Turn  # noqa: E402
from unimm.paradigms.sampling import GREEDY  # noqa: E402
from unimm.pipeline import InputError, Pipeline  # noqa: E402
from unimm.runs import FamilyError  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = [(RNG.random((40, 50, 3)) * 255).astype(np.uint8),      # not square: resized, padded
          (RNG.random((32, 32, 3)) * 255).astype(np.uint8),
          (RNG.random((20, 64, 3)) * 255).astype(np.uint8)]
QUESTIONS = ["What is it?", "How many shapes are there?", "Describe the picture."]
PROMPTS = ["a red circle", "two blue squares and a green triangle at the top left"]


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory):
    return hf_tiny.tiny_janus(tmp_path_factory.mktemp("janus") / "Janus-Tiny")


@pytest.fixture(scope="module")
def janus(janus_dir):
    from transformers import JanusForConditionalGeneration
    return (Pipeline.load(janus_dir, device="cpu"),
            JanusForConditionalGeneration.from_pretrained(janus_dir).eval(),
            hf_tiny.janus_processor(janus_dir))


def _until(ids: list[int], stop: int) -> list[int]:
    return ids[:ids.index(stop)] if stop in ids else ids


def _ours_answer(pipe, image, question, n):
    turn = Turn("vqa", pipe._ids(question, "question", 0), pipe._codes([pipe._image(image)])[0],
                None, None, pipe._image(image))
    with torch.no_grad():
        return turn, pipe.paradigm.generate_text(pipe.model, [turn], n, GREEDY)[0]


# ---- Janus -------------------------------------------------------------------------------------
def test_janus_answers_as_transformers_does(janus):
    pipe, ref, proc = janus
    for image, q in zip(IMAGES, QUESTIONS):
        inp = proc(text=[f"<|User|>: <image_placeholder>\n{q}\n\n<|Assistant|>:"],
                   images=[Image.fromarray(image)], return_tensors="pt")
        turn, ours = _ours_answer(pipe, image, q, 12)
        assert pipe.paradigm.layout(pipe.vocab, turn, False).tokens == \
            inp["input_ids"][0].tolist()                       # the processor's exact prompt
        with torch.inference_mode():
            out = ref.generate(**inp, max_new_tokens=12, do_sample=False)
        theirs = _until(out[0, inp["input_ids"].shape[1]:].tolist(), pipe.vocab.eos)
        assert ours == theirs
        text = pipe.answer([image], [q], max_new=12)[0]
        assert text == proc.tokenizer.decode(theirs, skip_special_tokens=True).strip()


@pytest.mark.parametrize("guidance", [3.0, 5.0])
def test_janus_draws_the_codes_transformers_draws(janus, guidance):
    pipe, ref, proc = janus
    for prompt in PROMPTS:
        inp = proc(text=[f"<|User|>: {prompt}\n\n<|Assistant|>:"], generation_mode="image",
                   return_tensors="pt")
        turn = Turn("t2i", pipe._ids(prompt, "prompt", 0))
        assert pipe.paradigm.layout(pipe.vocab, turn, False).tokens == inp["input_ids"][0].tolist()
        with torch.inference_mode():
            theirs = ref.generate(**inp, generation_mode="image", do_sample=False,
                                  guidance_scale=guidance)
            ours = pipe.paradigm.generate_images(pipe.model, [turn], guidance, GREEDY)
            assert ours.tolist() == theirs.tolist()
            pixels = ref.decode_image_tokens(theirs)                      # (1, S, S, 3) ~[-1, 1]
        want = ((pixels.float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).numpy()
        assert np.array_equal(pipe.parts.image_tok.decode(ours.view(1, *pipe.vocab.grid)), want)


def test_janus_unguided_and_batched_draws_match_a_reference_loop(janus):
    """Guidance 1 is no guidance (transformers' image mode fails there): checked against the
    reference's own modules step by step; a batch of equal-length prompts gives each row's
    single-prompt codes."""
    pipe, ref, proc = janus
    turn = Turn("t2i", pipe._ids(PROMPTS[0], "prompt", 0))
    ids = torch.tensor([pipe.paradigm.layout(pipe.vocab, turn, False).tokens])
    with torch.inference_mode():
        emb = ref.get_input_embeddings()(ids)
        out = ref.model.language_model(inputs_embeds=emb, use_cache=True)
        past, want = out.past_key_values, []
        for _ in range(pipe.vocab.n_image):
            code = ref.model.generation_head(out.last_hidden_state[:, -1]).argmax(-1)
            want.append(int(code))
            emb = ref.prepare_embeddings_for_image_generation(code[:, None])
            out = ref.model.language_model(inputs_embeds=emb, past_key_values=past,
                                           use_cache=True)
        ours = pipe.paradigm.generate_images(pipe.model, [turn], 1.0, GREEDY)
    assert ours[0].tolist() == want
    same = [Turn("t2i", pipe._ids(p, "prompt", 0)) for p in ("a red circle", "a blue circle")]
    with torch.no_grad():
        both = pipe.paradigm.generate_images(pipe.model, same, 3.0, GREEDY)
        for b, t in enumerate(same):
            assert both[b].tolist() == pipe.paradigm.generate_images(pipe.model, [t], 3.0,
                                                                     GREEDY)[0].tolist()


def test_janus_through_the_api(janus):
    pipe, _, _ = janus
    assert pipe.tasks == ("caption", "vqa", "t2i") and pipe.image_size == 32
    imgs = pipe.generate("a red circle", n=2, seed=0, temperature=1.0)
    assert len(imgs) == 2 and imgs[0].shape == (32, 32, 3)
    pieces = list(pipe.stream(IMAGES[0], "What is it?"))
    assert "".join(pieces) == pipe.ask(IMAGES[0], "What is it?")
    with pytest.raises(InputError, match="cannot edit"):
        pipe.edit(IMAGES[0], "Make it blue.")
    gray = (RNG.random((30, 30)) * 255).astype(np.uint8)              # any size, greyscale too
    assert isinstance(pipe.ask(gray, "What is it?"), str)


def test_janus_loads_in_bf16(janus_dir):
    pipe = Pipeline.load(janus_dir, device="cpu", dtype="bf16")
    assert next(pipe.model.parameters()).dtype == torch.bfloat16
    assert pipe.generate("a red circle", guidance=3.0)[0].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="dtype"):
        Pipeline.load(janus_dir, device="cpu", dtype="int4")


@pytest.mark.slow
def test_janus_is_served_like_the_default_model(janus):
    """The official openai client against `unimm serve` of a Janus checkpoint: chat with an
    image (and streamed), image generation; editing is refused with a 400."""
    openai = pytest.importorskip("openai")
    from test_serve import Server, data_url, decode_png, png
    from unimm.serve import ServeSettings, create_app
    pipe, _, _ = janus
    srv = Server(create_app(pipe, ServeSettings(wait_ms=0)))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        assert client.models.list().data[0].id == "unimm-Janus-Tiny"
        msgs = [{"role": "user", "content": [
            {"type": "text", "text": "What is it?"},
            {"type": "image_url", "image_url": {"url": data_url(IMAGES[1])}}]}]
        r = client.chat.completions.create(model="unimm", messages=msgs)
        assert r.choices[0].message.content == pipe.ask(IMAGES[1], "What is it?")
        chunks = list(client.chat.completions.create(model="unimm", messages=msgs, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
            r.choices[0].message.content
        imgs = client.images.generate(model="unimm", prompt="a red circle", n=2,
                                      extra_body={"seed": 0})
        assert [decode_png(d.b64_json).shape for d in imgs.data] == [(32, 32, 3)] * 2
        with pytest.raises(openai.BadRequestError, match="cannot edit"):
            client.images.edit(model="unimm", image=("a.png", png(IMAGES[1]), "image/png"),
                               prompt="Make it blue.")
    finally:
        srv.stop()


def test_geneval_export_writes_the_official_layout(janus, tmp_path):
    import json

    from unimm.eval.geneval_export import export, our_prompts
    pipe, _, _ = janus
    suite = our_prompts()
    assert {p["tag"] for p in suite} == {"single_object", "two_object", "counting", "colors",
                                         "position", "color_attr"} and len(suite) == 553
    out = export(pipe, tmp_path / "gx", per_prompt=2, limit=3, progress=False)
    for i in range(3):
        d = out / f"{i:05d}"
        assert json.loads((d / "metadata.jsonl").read_text()) == suite[i]
        assert sorted(p.name for p in (d / "samples").iterdir()) == ["0000.png", "0001.png"]
    first = (out / "00000" / "samples" / "0000.png").read_bytes()
    export(pipe, out, per_prompt=2, limit=3, progress=False)         # resumes: nothing redone
    assert (out / "00000" / "samples" / "0000.png").read_bytes() == first
    preset = json.loads((out / "export.json").read_text())["preset"]
    assert preset["guidance"] == 5.0 and preset["temperature"] == 1.0   # Janus's own preset
    with pytest.raises(ValueError, match="other settings"):
        export(pipe, out, per_prompt=3, limit=3, progress=False)


@pytest.mark.slow
def test_demo_on_a_released_checkpoint_uses_real_photos(janus_dir, tmp_path):
    from unimm.demo import run_demo
    report = run_demo(tmp_path / "demo", janus_dir).read_text()
    assert "Questions about photos" in report and "Text-to-image" in report
    assert (tmp_path / "demo" / "answers.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "generate.png").stat().st_size > 1000


def test_unsupported_folders_get_clear_errors(tmp_path, janus_dir):
    import json
    bad = tmp_path / "llava"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(FamilyError, match="supported: janus, emu3"):
        Pipeline.load(bad)
    orig = tmp_path / "orig"
    hf_tiny.janus_original(janus_dir, orig)
    with pytest.raises(FamilyError, match="unimm convert janus-original"):
        Pipeline.load(orig)
    with pytest.raises(ValueError, match="draws 32x32"):
        Pipeline.load(janus_dir, image_size=64)


def test_original_layout_converts_to_the_same_checkpoint(tmp_path, janus_dir):
    """DeepSeek's multi_modality layout (pickled .bin read with weights_only=True) ->
    transformers' layout: the same tensors, a config transformers and we both load, the same
    outputs."""
    import json

    from safetensors.torch import load_file
    from transformers import JanusForConditionalGeneration

    from unimm.cli.main import main
    orig = hf_tiny.janus_original(janus_dir, tmp_path / "orig")
    out = tmp_path / "converted"
    import sys
    argv, sys.argv = sys.argv, ["unimm", "convert", "janus-original", str(orig), str(out)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 0
    finally:
        sys.argv = argv
    want, got = load_file(str(janus_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    a, b = (json.loads((d / "config.json").read_text()) for d in (janus_dir, out))
    for part, keys in (("text_config", ("hidden_size", "num_hidden_layers", "vocab_size",
                                        "num_attention_heads", "intermediate_size")),
                       ("vision_config", ("hidden_size", "num_attention_heads", "image_size",
                                          "patch_size", "num_image_tokens")),
                       ("vq_config", ("embed_dim", "num_embeddings", "channel_multiplier"))):
        assert {k: a[part][k] for k in keys} == {k: b[part][k] for k in keys}
    ids = torch.tensor([[0, 5, 6, 7]])
    with torch.inference_mode():
        ref = JanusForConditionalGeneration.from_pretrained(janus_dir).eval()(input_ids=ids).logits
        conv = JanusForConditionalGeneration.from_pretrained(out).eval()(input_ids=ids).logits
    assert torch.equal(ref, conv)
    p, q = Pipeline.load(out), Pipeline.load(janus_dir)
    assert p.ask(IMAGES[0], "What is it?") == q.ask(IMAGES[0], "What is it?")
    with pytest.raises(ValueError, match="not DeepSeek's original"):
        from unimm.interop.janus_original import convert
        convert(janus_dir, tmp_path / "again")


# ---- Emu3 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emu3(tmp_path_factory):
    from transformers import AutoProcessor, Emu3ForConditionalGeneration
    d = hf_tiny.tiny_emu3(tmp_path_factory.mktemp("emu3") / "Emu3-Tiny")
    return (Pipeline.load(d, device="cpu", image_size=32),
            Emu3ForConditionalGeneration.from_pretrained(d).eval(), AutoProcessor.from_pretrained(d))


def _emu3_grid_fn(proc, vm, H, W):
    """The image-grid constraint of transformers' Emu3 docs (prefix_allowed_tokens_fn)."""
    v = proc.tokenizer.get_vocab()
    eof, eoi, eos, pad = (v[t] for t in ("<|extra_201|>", "<|image end|>", "<|extra_204|>",
                                         "<|endoftext|>"))
    wrap = v["<|image token|>"]

    def fn(_batch, ids):
        ids = ids.tolist()
        off = len(ids) - (len(ids) - 1 - ids[::-1].index(wrap))
        if off % (W + 1) == 0:
            return [vm.eol_token_id]
        return {(W + 1) * H + 1: [eof], (W + 1) * H + 2: [eoi],
                (W + 1) * H + 3: [eos]}.get(off, [pad] if off > (W + 1) * H + 3
                                             else vm.image_tokens)
    return fn


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_emu3_draws_on_the_grid_as_transformers_does(emu3, guidance):
    """transformers runs guidance as a second, unbatched pass over a negative prompt; ours
    batches the same row (the image prefix alone) beside the prompt."""
    pipe, ref, proc = emu3
    H, W = pipe.vocab.grid
    for prompt in PROMPTS:
        inp = proc(text=[prompt], return_for_image_generation=True, image_area=32 * 32,
                   return_tensors="pt")
        turn = Turn("t2i", pipe._ids(prompt, "prompt", 0))
        assert pipe.paradigm.layout(pipe.vocab, turn, False).tokens == inp["input_ids"][0].tolist()
        kw = {}
        if guidance != 1.0:
            neg = torch.tensor([pipe.paradigm.unconditional(turn).tokens])
            kw = dict(negative_prompt_ids=neg, negative_prompt_attention_mask=torch.ones_like(neg),
                      guidance_scale=guidance)
        with torch.inference_mode():
            out = ref.generate(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
                               max_new_tokens=(W + 1) * H + 3, do_sample=False,
                               prefix_allowed_tokens_fn=_emu3_grid_fn(proc, ref.model.vocabulary_mapping,
                                                                      H, W), **kw)
            gen = out[:, inp["input_ids"].shape[1]:]
            rows = gen[0, :-3].view(H, W + 1)
            assert bool((rows[:, W] == pipe.vocab.row_end).all())
            ours = pipe.paradigm.generate_images(pipe.model, [turn], guidance, GREEDY)
            assert ours[0].tolist() == (rows[:, :W].flatten() - pipe.vocab.code_start).tolist()
            pixels = ref.decode_image_tokens(image_tokens=gen, height=H, width=W)
        want = ((pixels.float() * 0.5 + 0.5) * 255).clamp(0, 255).permute(0, 2, 3, 1)
        assert np.array_equal(pipe.parts.image_tok.decode(ours.view(1, H, W)),
                              want.to(torch.uint8).numpy())


def test_emu3_answers_as_transformers_does(emu3):
    """Images of any aspect ratio become their own code grid (rows ending in end-of-line)."""
    pipe, ref, proc = emu3
    visual = ref.model.vocabulary_mapping.image_tokens
    for image, q in zip(IMAGES, QUESTIONS):
        inp = proc(text=[f"You are a helpful assistant. USER: <image>{q} ASSISTANT:"],
                   images=[Image.fromarray(image)], return_tensors="pt")
        turn, ours = _ours_answer(pipe, image, q, 8)
        with torch.inference_mode():
            out = ref.generate(**inp, max_new_tokens=8, do_sample=False, suppress_tokens=visual)
        assert ours == _until(out[0, inp["input_ids"].shape[1]:].tolist(), pipe.vocab.eos)


def test_emu3_through_the_api(emu3):
    pipe, _, _ = emu3
    assert pipe.generate("a red circle", guidance=3.0, temperature=0)[0].shape == (32, 32, 3)
    assert isinstance(pipe.caption(IMAGES[2]), str)
    with pytest.raises(InputError, match="cannot edit"):
        pipe.edit(IMAGES[1], "Make it blue.")
