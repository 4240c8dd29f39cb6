"""Reference-layout checkpoints -> the policy's pretrained directory, on the tiny preset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from dreamzero_policy.convert.checkpoint import (
    ADAPTER_NAME,
    convert_checkpoint,
    main,
    write_reference_checkpoint,
)
from dreamzero_policy.convert.dit import dit_params_from_torch
from dreamzero_policy.convert.image_encoder import image_encoder_params_from_torch
from dreamzero_policy.convert.reference_layout import (
    reference_entries,
    reference_state_dict,
    unused_reference_shapes,
)
from dreamzero_policy.convert.state_io import StateMismatchError, flat_params
from dreamzero_policy.convert.text_encoder import text_encoder_params_from_torch
from dreamzero_policy.convert.vae import vae_params_from_torch
from dreamzero_policy.models.presets import get_preset
from dreamzero_policy.models.world_model import DreamZeroModel
from dreamzero_policy.weights_io import WEIGHTS_NAME, load_weights, read_weights, save_flat

CFG = get_preset("tiny")
P = "action_head.model."
METADATA = {
    "droid": {
        "statistics": {
            "state": {
                "joint_position": {
                    s: [float(i) for i in range(5)] for s in ("mean", "std", "min", "max", "q01")
                }
                | {"q99": [10.0] * 5},
                "gripper_position": {s: [0.5] for s in ("mean", "std", "min", "max", "q01", "q99")},
            },
            "action": {
                "joint_position": {s: [0.0] * 5 for s in ("mean", "std", "min", "max", "q01")}
                | {"q99": [2.0] * 5},
                "gripper_position": {s: [1.0] for s in ("mean", "std", "min", "max", "q01", "q99")},
            },
        },
        "modalities": {
            "video": {"exterior_image_1_left": {"resolution": [32, 16], "channels": 3, "fps": 15}},
            "state": {},
            "action": {"joint_position": {"absolute": False}, "gripper_position": {"absolute": True}},
        },
        "embodiment_tag": "droid",
    }
}
CONFIG_JSON = {
    "action_head_cfg": {
        "config": {
            "lora_rank": 2,
            "lora_alpha": 4,
            "diffusion_model_cfg": {
                "dim": 32,
                "num_heads": 2,
                "num_layers": 2,
                "in_dim": 12,
                "out_dim": 4,
                "ffn_dim": 64,
            },
        }
    }
}


@pytest.fixture(scope="module")
def model() -> DreamZeroModel:
    return DreamZeroModel(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def flat(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flat_params(model).items()}


@pytest.fixture(scope="module")
def ref_sd(flat) -> dict[str, np.ndarray]:
    """The full reference state dict, including tensors the JAX model drops (last CLIP block, ...)."""
    entries = reference_entries(CFG)
    sd = reference_state_dict(flat, entries)
    rng = np.random.default_rng(0)
    for k, shape in unused_reference_shapes(CFG, entries).items():
        sd[k] = rng.standard_normal(shape).astype(np.float32)
    return sd


def _write_dir(
    d: Path, sd: dict, config_json: dict | None = CONFIG_JSON, meta: dict | None = METADATA
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_flat(sd, d / "model.safetensors")
    if config_json is not None:
        (d / "config.json").write_text(json.dumps(config_json))
    if meta is not None:
        (d / "experiment_cfg").mkdir(exist_ok=True)
        (d / "experiment_cfg" / "metadata.json").write_text(json.dumps(meta))
    return d


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))[:10]
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(
            np.asarray(got[k], np.float32), np.asarray(want[k], np.float32), err_msg=k
        )


def test_reference_names_spot_check(flat, ref_sd):
    """Hand-written reference keys and torch shapes (not derived from our mapping)."""
    expect = {
        P + "patch_embedding.weight": (32, 12, 1, 2, 2),  # Conv3d (out, in, t, h, w)
        P + "blocks.0.ffn.0.weight": (64, 32),  # nn.Linear (out, in)
        P + "blocks.1.modulation": (1, 6, 32),
        P + "head.head.weight": (16, 32),
        P + "time_projection.1.weight": (192, 32),
        P + "img_emb.proj.4.weight": (32,),
        P + "state_encoder.layer1.W": (2, 8, 32),  # CategorySpecificLinear [cat, in, out]
        P + "action_encoder.W2.W": (2, 64, 32),
        "action_head.text_encoder.blocks.1.ffn.gate.0.weight": (64, 32),
        "action_head.text_encoder.blocks.0.pos_embedding.embedding.weight": (32, 2),
        "action_head.text_encoder.token_embedding.weight": (384, 32),
        "action_head.image_encoder.model.visual.transformer.0.attn.to_qkv.weight": (96, 32),
        "action_head.image_encoder.model.visual.patch_embedding.weight": (32, 3, 14, 14),
        "action_head.vae.model.encoder.downsamples.0.residual.0.gamma": (8, 1, 1, 1),
        "action_head.vae.model.encoder.middle.1.norm.gamma": (16, 1, 1),
        "action_head.vae.model.encoder.middle.1.to_qkv.weight": (48, 16, 1, 1),
        "action_head.vae.model.encoder.downsamples.1.resample.1.weight": (8, 8, 3, 3),
        "action_head.vae.model.conv1.weight": (8, 8, 1, 1, 1),
    }
    for k, shape in expect.items():
        assert ref_sd[k].shape == shape, k
    np.testing.assert_array_equal(
        ref_sd[P + "blocks.1.self_attn.q.weight"], flat["dit/blocks/self_attn/q/kernel"][1].T
    )
    np.testing.assert_array_equal(ref_sd[P + "blocks.1.modulation"], flat["dit/blocks/modulation"][1])


def test_layout_agrees_with_per_model_converters(flat, ref_sd):
    def sub(prefix):
        return {k[len(prefix) :]: v for k, v in ref_sd.items() if k.startswith(prefix)}

    outs = {
        "dit": dit_params_from_torch(sub(P), CFG.dit.num_layers),
        "text_encoder": text_encoder_params_from_torch(sub("action_head.text_encoder."), CFG.text),
        "image_encoder": image_encoder_params_from_torch(
            sub("action_head.image_encoder.model.visual."), CFG.image
        ),
        "vae": vae_params_from_torch(sub("action_head.vae.model."), CFG.vae),
    }
    _assert_same({f"{a}/{k}": v for a, d in outs.items() for k, v in d.items()}, flat)


def test_convert_full_directory(tmp_path, model, flat, ref_sd):
    from dreamzero_policy.configuration_dreamzero import DreamZeroJaxConfig

    src = _write_dir(tmp_path / "src", ref_sd)
    report = convert_checkpoint(src, tmp_path / "out", progress=False)
    assert report.preset == "tiny" and report.lora is None
    assert len(report.skipped) == len(unused_reference_shapes(CFG, reference_entries(CFG)))
    _assert_same(read_weights(tmp_path / "out" / WEIGHTS_NAME), flat)
    load_weights(model, tmp_path / "out" / WEIGHTS_NAME)  # strict: every parameter present, right shape
    _assert_same({k: np.asarray(v) for k, v in flat_params(model).items()}, flat)

    cfg = DreamZeroJaxConfig.from_pretrained(tmp_path / "out")
    assert cfg.preset == "tiny" and cfg.input_features["observation.state"].shape == (6,)
    assert cfg.input_features["observation.images.exterior_image_1_left"].shape == (3, 16, 32)
    assert cfg.output_features["action"].shape == (6,) and cfg.relative_action_dims == [0, 1, 2, 3, 4]
    stats = [p for p in (tmp_path / "out").glob("*normalizer_processor.safetensors")]
    assert stats, sorted(p.name for p in (tmp_path / "out").iterdir())
    q99 = read_weights(stats[0])["observation.state.q99"]
    np.testing.assert_array_equal(q99, [10, 10, 10, 10, 10, 0.5])


def test_round_trip_identity(tmp_path, flat, ref_sd):
    """JAX -> reference (file) -> JAX is the identity, and reference -> JAX -> reference too."""
    sd = write_reference_checkpoint(flat, CFG, tmp_path / "src" / "model.safetensors")
    convert_checkpoint(tmp_path / "src", tmp_path / "out", require_stats=False, progress=False)
    back = read_weights(tmp_path / "out" / WEIGHTS_NAME)
    _assert_same(back, flat)
    _assert_same(reference_state_dict(back, reference_entries(CFG)), sd)


def test_bf16_stays_bf16_and_sharded_index(tmp_path, flat, ref_sd):
    bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in ref_sd.items()}
    src = tmp_path / "src"
    src.mkdir()
    keys = sorted(bf)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_flat({k: bf[k] for k in ks}, src / name)
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}})
    )
    convert_checkpoint(src, tmp_path / "out", require_stats=False, progress=False)
    got = read_weights(tmp_path / "out" / WEIGHTS_NAME)
    _assert_same(got, {k: v.astype(ml_dtypes.bfloat16) for k, v in flat.items()})


def test_bare_dit_layout_and_parts(tmp_path, model, flat, ref_sd):
    bare = {k.removeprefix(P): v for k, v in ref_sd.items() if k.startswith(P)}
    _write_dir(tmp_path / "src", bare, config_json=None, meta=None)
    with pytest.raises(
        StateMismatchError, match=r"missing .*action_head\.text_encoder\.token_embedding\.weight"
    ):
        convert_checkpoint(tmp_path / "src", tmp_path / "bad", require_stats=False, progress=False)
    report = convert_checkpoint(
        tmp_path / "src", tmp_path / "out", parts="dit", require_stats=False, progress=False
    )
    assert report.parts == ("dit",)
    got = read_weights(tmp_path / "out" / WEIGHTS_NAME)
    _assert_same(got, {k: v for k, v in flat.items() if k.startswith("dit/")})
    with pytest.raises(ValueError, match=r"without the parts \[text,image,vae\]"):
        load_weights(model, tmp_path / "out" / WEIGHTS_NAME)
    load_weights(model, tmp_path / "out" / WEIGHTS_NAME, allow_missing=True)
    np.testing.assert_array_equal(
        np.asarray(model.dit.blocks.ffn_0.kernel[...]), flat["dit/blocks/ffn_0/kernel"]
    )


def _lora_sd(ref_sd: dict, rank: int = 2) -> tuple[dict, dict]:
    """PEFT-style checkpoint of the reference DiT + the merged weights it must convert to."""
    rng = np.random.default_rng(1)
    sd, merged = {}, {}
    for k, v in ref_sd.items():
        if not k.startswith(P):
            sd[k] = v
            continue
        local = k.removeprefix(P)
        module, _, leaf = local.rpartition(".")
        if re.fullmatch(r"blocks\.\d+\.((self|cross)_attn\.[qkvo]|ffn\.[02])", module):
            sd[f"{P}base_model.model.{module}.base_layer.{leaf}"] = v
            if leaf == "weight":
                a = rng.standard_normal((rank, v.shape[1])).astype(np.float32)
                b = rng.standard_normal((v.shape[0], rank)).astype(np.float32)
                sd[f"{P}base_model.model.{module}.lora_A.default.weight"] = a
                sd[f"{P}base_model.model.{module}.lora_B.default.weight"] = b
                merged[k] = v + (4 / rank) * (b @ a)
        else:
            sd[f"{P}base_model.model.{local}"] = v
    return sd, merged


def test_lora_merge(tmp_path, flat, ref_sd):
    sd, merged = _lora_sd(ref_sd)
    assert len(merged) == CFG.dit.num_layers * 10  # self q,k,v,o + cross q,k,v,o + ffn.0, ffn.2
    _write_dir(tmp_path / "src", sd)
    report = convert_checkpoint(tmp_path / "src", tmp_path / "out", progress=False)
    assert report.lora == "merge" and report.lora_scale == 2.0
    want_ref = {**{k: v for k, v in ref_sd.items()}, **merged}
    want = reference_state_dict(flat, reference_entries(CFG))  # keys in reference order
    want = {k: want_ref[k] for k in want}
    got = read_weights(tmp_path / "out" / WEIGHTS_NAME)
    back = reference_state_dict(got, reference_entries(CFG))
    assert set(back) == set(want)
    for k in want:
        np.testing.assert_allclose(back[k], want[k], rtol=0, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(
        got["dit/blocks/self_attn/q/kernel"][1], merged[P + "blocks.1.self_attn.q.weight"].T, atol=1e-5
    )
    np.testing.assert_array_equal(got["dit/blocks/norm3/scale"], flat["dit/blocks/norm3/scale"])


def test_lora_keep(tmp_path, flat, ref_sd):
    sd, merged = _lora_sd(ref_sd)
    _write_dir(tmp_path / "src", sd)
    convert_checkpoint(tmp_path / "src", tmp_path / "out", lora="keep", progress=False)
    _assert_same(read_weights(tmp_path / "out" / WEIGHTS_NAME), flat)
    ad = read_weights(tmp_path / "out" / ADAPTER_NAME)
    assert len(ad) == 20 and ad["dit/blocks/ffn_0/kernel/lora_a"].shape == (2, 32, 2)
    k = "dit/blocks/cross_attn/o/kernel"
    np.testing.assert_allclose(
        flat[k][0] + 2.0 * ad[k + "/lora_a"][0] @ ad[k + "/lora_b"][0],
        merged[P + "blocks.0.cross_attn.o.weight"].T,
        atol=1e-5,
    )


def test_lora_without_alpha_is_an_error(tmp_path, ref_sd):
    sd, _ = _lora_sd(ref_sd)
    _write_dir(tmp_path / "src", sd, config_json={})
    with pytest.raises(ValueError, match="lora_alpha"):
        convert_checkpoint(tmp_path / "src", tmp_path / "out", progress=False)


def test_corrupt_and_truncated_files(tmp_path, ref_sd):
    src = _write_dir(tmp_path / "src", ref_sd)
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"truncated .*src/model\.safetensors.*ends at byte"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:200])
    with pytest.raises(ValueError, match=r"corrupt .*src/model\.safetensors.*not JSON"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    f.write_bytes(b"abc")
    with pytest.raises(ValueError, match=r"src/model\.safetensors.*no header"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / WEIGHTS_NAME).exists()


def test_wrong_shape_missing_and_unexpected_in_one_error(tmp_path, ref_sd):
    sd = dict(ref_sd)
    sd[P + "blocks.0.ffn.2.weight"] = np.zeros((32, 63), np.float32)
    del sd["action_head.vae.model.encoder.conv1.bias"]
    sd["action_head.vae.model.encoder.extra.weight"] = np.zeros(3, np.float32)
    _write_dir(tmp_path / "src", sd)
    with pytest.raises(StateMismatchError) as e:
        convert_checkpoint(tmp_path / "src", tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "missing 1: ['action_head.vae.model.encoder.conv1.bias']" in msg
    assert "unexpected 1: ['action_head.vae.model.encoder.extra.weight']" in msg
    assert "action_head.model.blocks.0.ffn.2.weight: expected (32, 64), got (32, 63)" in msg


def test_config_json_disagreement(tmp_path, ref_sd):
    bad = json.loads(json.dumps(CONFIG_JSON))
    bad["action_head_cfg"]["config"]["diffusion_model_cfg"]["num_layers"] = 3
    _write_dir(tmp_path / "src", ref_sd, config_json=bad)
    with pytest.raises(ValueError, match="num_layers: tensors 2 vs config.json 3"):
        convert_checkpoint(tmp_path / "src", tmp_path / "out", progress=False)
    bad["action_head_cfg"]["config"]["diffusion_model_cfg"].update(num_layers=2, num_heads=4)
    _write_dir(tmp_path / "src", ref_sd, config_json=bad)
    with pytest.raises(ValueError, match=r"matches no preset .*num_heads=4"):
        convert_checkpoint(tmp_path / "src", tmp_path / "out", progress=False)


def test_torch_file_weights_only(tmp_path, flat, ref_sd):
    import torch

    src = tmp_path / "src"
    src.mkdir()
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in ref_sd.items()}, src / "model.pt")
    convert_checkpoint(src, tmp_path / "out", require_stats=False, progress=False)
    _assert_same(
        read_weights(tmp_path / "out" / WEIGHTS_NAME),
        {k: v.astype(ml_dtypes.bfloat16) for k, v in flat.items()},
    )
    data = (src / "model.pt").read_bytes()
    (src / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read torch checkpoint .*model\.pt"):
        convert_checkpoint(src, tmp_path / "out2", require_stats=False, progress=False)


def test_cli(tmp_path, ref_sd, capsys):
    src = _write_dir(tmp_path / "src", ref_sd)
    main([f"--src={src}", f"--out={tmp_path / 'out'}", "--parts=dit,vae", "--quiet=true"])
    assert "preset tiny, parts dit,vae" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown parts"):
        main([f"--src={src}", f"--out={tmp_path / 'o2'}", "--parts=dit,unet", "--quiet=true"])
    with pytest.raises(SystemExit, match="--src=CHECKPOINT_DIR and --out=OUTPUT_DIR are required"):
        main([f"--out={tmp_path / 'o2'}"])
    with pytest.raises(SystemExit, match=r"dreamzero-convert: `no_stats`: Couldn't parse 'maybe'"):
        main([f"--src={src}", f"--out={tmp_path / 'o2'}", "--no_stats=maybe"])
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    assert all(f in usage for f in ("--src", "--out", "--lora_alpha", "--no_stats", "--tokenizer_dir"))
    assert not (tmp_path / "o2").exists()


# ---------------------------------------------------------------- where the output goes (all-or-nothing)


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_refuses_outputs_that_touch_the_source(tmp_path, ref_sd):
    src = _write_dir(tmp_path / "src", ref_sd)
    before = _tree(src)
    (tmp_path / "link").symlink_to(src)
    cases = {
        src: "is the checkpoint directory",
        tmp_path / "link": "is the checkpoint directory",  # symlinks are resolved
        src / "converted": "inside the checkpoint directory",
        tmp_path / "link" / "converted": "inside the checkpoint directory",
        tmp_path: "contains the checkpoint directory",
    }
    for out, why in cases.items():
        with pytest.raises(ValueError, match=why):
            convert_checkpoint(src, out, progress=False)
    with pytest.raises(SystemExit, match="is the checkpoint directory"):
        main([f"--src={src}", f"--out={src}", "--quiet=true"])  # the CLI used to report success here
    with pytest.raises(ValueError, match="is the checkpoint directory"):
        convert_checkpoint(src / "model.safetensors", src, progress=False)  # a file source: its directory
    assert _tree(src) == before and sorted(p.name for p in tmp_path.iterdir()) == ["link", "src"]

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        convert_checkpoint(src, tmp_path / "a_file", progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not an earlier dreamzero-convert output"):
        convert_checkpoint(src, foreign, progress=False)
    assert _tree(foreign) == {"notes.txt": b"mine"}
    (tmp_path / "empty").mkdir()
    convert_checkpoint(src, tmp_path / "empty", progress=False)  # an empty directory is fine
    assert (tmp_path / "empty" / WEIGHTS_NAME).is_file()


def test_failed_conversion_leaves_no_output_and_keeps_the_earlier_one(tmp_path, flat, ref_sd):
    src = _write_dir(tmp_path / "src", ref_sd)
    out = tmp_path / "out"
    convert_checkpoint(src, out, progress=False)
    earlier = _tree(out)
    marker = json.loads((out / "conversion.json").read_text())
    assert marker["tool"] == "dreamzero-convert" and marker["source"] == str(src.resolve())

    bad = dict(ref_sd)
    key = "action_head.vae.model.decoder.head.2.weight"
    bad[key] = bad[key].copy()
    bad[key].flat[3] = np.nan
    bad_src = _write_dir(tmp_path / "bad_src", bad)
    with pytest.raises(ValueError, match=re.escape(key) + r": 1 of \d+ values are NaN or inf"):
        convert_checkpoint(bad_src, out, progress=False)  # fails while streaming the weights
    assert _tree(out) == earlier  # the earlier output is untouched ...
    with pytest.raises(ValueError, match="NaN or inf"):
        convert_checkpoint(bad_src, tmp_path / "new", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_src", "out", "src"]  # ... and nothing is left

    convert_checkpoint(src, out, parts="dit", progress=False)  # an earlier output is replaced as a whole
    assert set(read_weights(out / WEIGHTS_NAME)) == {k for k in flat if k.startswith("dit/")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_src", "out", "src"]


# ---------------------------------------------------------------- hostile checkpoints


def test_nonfinite_weights_refused_unless_allowed(tmp_path, ref_sd, capsys):
    sd = dict(ref_sd)
    key = P + "blocks.1.ffn.0.weight"
    sd[key] = sd[key].copy()
    sd[key][0, :2] = [np.inf, np.nan]
    src = _write_dir(tmp_path / "src", sd)
    with pytest.raises(SystemExit, match=re.escape(key) + r": 2 of 2048 values are NaN or inf.*--allow_nonfinite=true"):
        main([f"--src={src}", f"--out={tmp_path / 'out'}", "--quiet=true"])
    assert not (tmp_path / "out").exists()
    main([f"--src={src}", f"--out={tmp_path / 'out'}", "--quiet=true", "--allow_nonfinite=true"])
    got = read_weights(tmp_path / "out" / WEIGHTS_NAME)["dit/blocks/ffn_0/kernel"][1]
    assert np.isinf(got[0, 0]) and np.isnan(got[1, 0])


def _sharded(src: Path, ref_sd: dict, where: dict[str, object]) -> None:
    src.mkdir()
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": where}))


@pytest.mark.parametrize(
    "weight_map,match",
    [
        ("list", r"'weight_map' must be a non-empty JSON object .* got list"),
        ("ints", r"shard names must be strings"),
        ("parent", r"names the shard '\.\./outside\.safetensors' outside its directory"),
        ("absolute", r"names the shard '/.*outside\.safetensors' outside its directory"),
    ],
)
def test_hostile_shard_index(tmp_path, ref_sd, weight_map, match):
    outside = tmp_path / "outside.safetensors"
    save_flat(ref_sd, outside)  # a complete checkpoint an escaping index could read
    keys = sorted(ref_sd)
    maps = {
        "list": [[k, "model.safetensors"] for k in keys],
        "ints": dict.fromkeys(keys, 3),
        "parent": dict.fromkeys(keys, "../outside.safetensors"),
        "absolute": dict.fromkeys(keys, str(outside)),
    }
    _sharded(tmp_path / "src", ref_sd, maps[weight_map])
    with pytest.raises(ValueError, match=match):
        convert_checkpoint(tmp_path / "src", tmp_path / "out", require_stats=False, progress=False)
    with pytest.raises(SystemExit, match=r"dreamzero-convert: corrupt checkpoint index|outside its directory"):
        main([f"--src={tmp_path / 'src'}", f"--out={tmp_path / 'out'}", "--no_stats=true", "--quiet=true"])
    assert not (tmp_path / "out").exists()


def test_missing_source_and_bad_config_json(tmp_path, ref_sd):
    with pytest.raises(FileNotFoundError, match=r"checkpoint source .*/nowhere does not exist"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out", progress=False)
    with pytest.raises(SystemExit, match=r"checkpoint source .*/nowhere does not exist"):
        main([f"--src={tmp_path / 'nowhere'}", f"--out={tmp_path / 'out'}"])
    src = _write_dir(tmp_path / "src", ref_sd, config_json=[1, 2])  # valid JSON, not a config
    with pytest.raises(ValueError, match=r"src/config\.json: expected a JSON object .* got list"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    (src / "config.json").write_text('{"action_head_cfg": ')
    with pytest.raises(SystemExit, match=r"cannot read .*src/config\.json"):
        main([f"--src={src}", f"--out={tmp_path / 'out'}", "--quiet=true"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["droid"]["statistics"]["state"]["gripper_position"].update(q99=[float("nan")]),
         r"statistics\.state 'q99' hold NaN or inf"),
        (lambda m: m["droid"]["statistics"]["action"]["joint_position"].update(mean=[[0.0] * 5] * 24),
         "per-horizon statistics are not supported"),
        (lambda m: m["droid"]["statistics"]["action"]["joint_position"].update(std="wide"), "are not numbers"),
        (lambda m: m["droid"].update(modalities="cameras"), "no statistics.state / statistics.action maps"),
        (lambda m: m["droid"]["modalities"]["video"]["exterior_image_1_left"].pop("resolution"),
         r"modalities\.video must map each camera"),
    ],
)
def test_hostile_metadata(tmp_path, edit, match):
    from dreamzero_policy.convert.normalization_stats import read_reference_stats

    meta = json.loads(json.dumps(METADATA))
    edit(meta)
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"metadata\.json: .*" + match):
        read_reference_stats(tmp_path / "metadata.json")


# ---------------------------------------------------------------- the policy settings of a real checkpoint

DROID_META = json.loads(json.dumps(METADATA))
DROID_META["oxe_droid"] = DROID_META.pop("droid")
DROID_META["oxe_droid"]["modalities"]["video"] = {
    name: {"resolution": [320, 180], "channels": 3, "fps": 15}
    for name in ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
}


def test_converted_config_carries_the_reference_run_settings(tmp_path, ref_sd, capsys):
    from dreamzero_policy.configuration_dreamzero import REFERENCE_DIT_STEPS, DreamZeroJaxConfig

    bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in ref_sd.items()}
    src = _write_dir(tmp_path / "src", bf, meta=DROID_META)
    (src / "experiment_cfg" / "conf.yaml").write_text(
        "image_resolution_width: 32\nimage_resolution_height: 16\nnum_frames: 33\n"
    )
    tok = tmp_path / "umt5"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "out"
    main([f"--src={src}", f"--out={out}", f"--tokenizer_dir={tok}", "--quiet=true"])
    assert "warning" not in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    wrist, ext1, ext2 = (f"observation.images.{n}" for n in ("wrist_image_left", "exterior_image_1_left",
                                                              "exterior_image_2_left"))
    assert saved["tiling"] == "droid" and saved["cameras"] == [wrist, ext1, ext2]  # wrist on top
    assert (saved["view_height"], saved["view_width"]) == (16, 32)  # conf.yaml, per view
    assert saved["dtype"] == "bfloat16" and saved["tokenizer_dir"] == str(tok.resolve())
    assert saved["num_inference_steps"] == 16 and saved["dit_steps"] == list(REFERENCE_DIT_STEPS)
    assert saved["cfg_scale"] == saved["sigma_shift"] == 5.0 and saved["max_chunks_before_reset"] == 4
    assert saved["n_action_steps"] == min(4 * CFG.dit.frames_per_block, CFG.dit.actions_per_block)
    cfg = DreamZeroJaxConfig.from_pretrained(out)
    assert cfg.frame_size == (32, 64) and cfg.input_features[wrist].shape == (3, 180, 320)

    # fp32 weights, a tokenizer shipped in the checkpoint, no conf.yaml: the cameras' own size
    (src / "experiment_cfg" / "conf.yaml").unlink()
    save_flat(ref_sd, src / "model.safetensors")
    (src / "tokenizer").mkdir()
    (src / "tokenizer" / "spiece.model").write_bytes(b"x")
    convert_checkpoint(src, out, progress=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["dtype"] == "float32" and saved["tokenizer_dir"] == str((src / "tokenizer").resolve())
    assert (saved["view_height"], saved["view_width"]) == (180, 320)
    with pytest.raises(ValueError, match="--tokenizer_dir=.*not a tokenizer directory"):
        convert_checkpoint(src, out, tokenizer_dir=str(tmp_path), progress=False)


def test_reference_settings_of_the_real_presets():
    from dreamzero_policy.convert.policy_settings import policy_settings

    droid = {f"observation.images.{n}": (3, 180, 320) for n in ("exterior_image_1_left", "exterior_image_2_left",
                                                                 "wrist_image_left")}

    def settings(preset, **kw):
        args = dict(cameras=droid, embodiment="oxe_droid", config_json=None, conf=None,
                    dit_dtypes=[np.dtype(ml_dtypes.bfloat16)], src_dir=Path("/nonexistent"), tokenizer_dir=None)
        return policy_settings(preset, get_preset(preset), **(args | kw))

    s14 = settings("wan21_14b")
    assert (s14.fields["view_height"], s14.fields["view_width"], s14.fields["tiling"]) == (176, 320, "droid")
    assert s14.fields["n_action_steps"] == 8 and s14.fields["dtype"] == "bfloat16"  # 8 of 24, as the reference
    assert any("--tokenizer_dir=DIR" in w and "google/umt5-xxl" in w for w in s14.warnings)
    s5 = settings("wan22_5b")  # the 5B head resizes the tiled frame to 160x320: 80x160 per view
    assert (s5.fields["view_height"], s5.fields["view_width"]) == (80, 160)
    s5 = settings("wan22_5b", config_json={"action_head_cfg": {"config": {"target_video_height": 176,
                                                                          "target_video_width": 320}}})
    assert (s5.fields["view_height"], s5.fields["view_width"]) == (88, 160)
    two = {k: v for k, v in droid.items() if "2" not in k}
    other = settings("wan21_14b", cameras=two, embodiment="agibot")
    assert other.fields["tiling"] == "row" and any("2x2 grid" in w for w in other.warnings)


def test_tokenizer_error_names_the_policy_flag():
    from dreamzero_policy.models.world_model import make_tokenizer

    with pytest.raises(ValueError, match=r"--policy\.tokenizer_dir=DIR"):
        make_tokenizer(get_preset("wan21_14b"))
