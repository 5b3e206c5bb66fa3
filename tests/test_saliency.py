import numpy as np
import pytest
import torch

from nuwa.ingest import build_processed
from nuwa.errors import DivergedError
from nuwa.saliency import (causal_mask, column_importance, compute_importance, environment_count, normalise_per_step,
                           saliency_dataset)
from nuwa.upstream import UpstreamViT, _attention_weights
from nuwa.windows import WindowDataset, load_series


def test_column_importance_matches_formula_on_hand_built_attention():
    generator = torch.Generator().manual_seed(0)
    batch, heads, tokens = 3, 2, 5
    attention = torch.rand(batch, heads, tokens, tokens, generator=generator).softmax(dim=-1)
    expected = torch.zeros(batch, tokens)
    for b in range(batch):
        for j in range(tokens):
            expected[b, j] = sum(attention[b, h, i, j] for h in range(heads) for i in range(tokens)) / (heads * tokens)
    assert torch.allclose(column_importance(attention), expected, atol=1e-7)
    # rows sum to one, so the row mean would carry no information; the columns do
    assert not torch.allclose(column_importance(attention), torch.full_like(expected, 1 / tokens))


def test_hand_built_attention_one_dominant_key():
    attention = torch.zeros(1, 1, 4, 4)
    attention[..., 2] = 0.7
    attention[..., [0, 1, 3]] = 0.1
    importance = normalise_per_step(column_importance(attention))
    assert importance.argmax().item() == 2
    assert importance.max().item() == 1.0 and importance.min().item() == 0.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_masks_sorted_by_torch_on_the_device_equal_numpys_ties_included(device):
    rng = np.random.default_rng(5)
    importance = rng.random((6, 4, 16)).astype(np.float32)
    importance[0, 0] = 0.5  # all tied: the first ⌊ρ·L⌋ patches are environmental
    importance[1, :, ::2] = importance[1, :, 1::2]  # pairs of ties
    importance = np.round(importance, 1)  # many ties everywhere
    for ratio in (0.25, 0.5, 0.1):
        expected = causal_mask(importance, ratio)
        result = causal_mask(torch.from_numpy(importance).to(device), ratio)
        assert result.dtype == torch.int8 and result.device.type == device
        np.testing.assert_array_equal(result.cpu().numpy(), expected)
    assert (causal_mask(importance, 0.25)[0, 0] == [0] * 4 + [1] * 12).all()


def test_per_step_min_max_against_numpy_and_equal_steps_give_zeros():
    rng = np.random.default_rng(3)
    values = rng.random((4, 3, 9)).astype(np.float32)
    values[1, 2] = 0.25  # a step whose patches are all equally important
    values[3, 0] = 0.0
    low, high = values.min(axis=-1, keepdims=True), values.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(high > low, (values - low) / (high - low), 0).astype(np.float32)
    result = normalise_per_step(torch.from_numpy(values.copy())).numpy()
    np.testing.assert_array_equal(result, expected)
    assert (result[1, 2] == 0).all() and (result[3, 0] == 0).all()


@pytest.mark.parametrize("ratio,patches", [(0.25, 16), (0.3, 16), (0.5, 9), (0.1, 4), (0.99, 64)])
def test_number_of_environmental_patches_is_floor_ratio_times_patches(ratio, patches):
    rng = np.random.default_rng(1)
    importance = rng.random((7, 3, patches))
    mask = causal_mask(importance, ratio)
    expected = int(np.floor(ratio * patches))
    assert expected == environment_count(patches, ratio)
    assert ((mask == 0).sum(axis=-1) == expected).all()
    # the environmental ones are the least important
    for row_importance, row_mask in zip(importance.reshape(-1, patches), mask.reshape(-1, patches)):
        if expected:
            assert row_importance[row_mask == 0].max() <= row_importance[row_mask == 1].min()


@pytest.mark.parametrize("ratio,patches,expected", [
    (0.29, 100, 29), (0.57, 100, 57), (0.58, 100, 58),  # the float product is 28.999..., 56.999..., 57.999...
    (0.25, 16, 4), (0.5, 9, 4), (0.1, 4, 0), (0.3, 10, 3), (0.7, 10, 7), (0.99, 64, 63), (0.125, 8, 1)])
def test_environment_count_is_the_floor_of_the_decimal_ratio_written(ratio, patches, expected):
    assert environment_count(patches, ratio) == expected
    assert environment_count(patches, np.float64(ratio)) == expected
    mask = causal_mask(np.random.default_rng(0).random((2, 3, patches)), ratio)
    assert ((mask == 0).sum(axis=-1) == expected).all()


def test_environment_count_differs_from_the_float_product_where_binary_rounds_down():
    # the cases the exact count exists for: the float product floors one lower
    for ratio in (0.29, 0.57, 0.58):
        assert int(np.floor(ratio * 100)) == round(ratio * 100) - 1
        assert environment_count(100, ratio) == round(ratio * 100)


def test_saliency_dataset_holds_importance_only():
    importance = np.random.default_rng(2).random((3, 2, 4, 4)).astype(np.float32)
    dataset = saliency_dataset(np.array([0, 2, 4]), importance, patch_size=4, layers=[-1], depth=2,
                               dataset_name="toy")
    assert set(dataset.data_vars) == {"importance"}
    assert "environment_ratio" not in dataset.attrs and "environmental_patches_per_step" not in dataset.attrs
    assert {"patch_size", "layers", "split", "title", "Conventions", "nuwa_dataset"} <= set(dataset.attrs)
    assert dataset.attrs["patch_size"] == 4 and list(dataset.attrs["layers"]) == [1]
    assert dataset.attrs["nuwa_dataset"] == "toy" and dataset.attrs["split"] == "train"
    np.testing.assert_array_equal(dataset["sample"].values, [0, 2, 4])
    np.testing.assert_array_equal(dataset["importance"].values, importance)


def test_recomputed_attention_reproduces_timm_block_output():
    model = UpstreamViT(frames=2, channels=1, height=8, width=8, patch_size=2, embed_dim=16, depth=2, num_heads=4,
                        mlp_ratio=2.0).eval()
    tokens = torch.randn(3, 16, 16)
    attention_module = model.blocks[0].attn
    normed = model.blocks[0].norm1(tokens)
    weights = _attention_weights(attention_module, normed)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, 16), atol=1e-6)
    qkv = attention_module.qkv(normed).reshape(3, 16, 3, 4, 4).permute(2, 0, 3, 1, 4)
    values = qkv[2]
    manual = (weights @ values).transpose(1, 2).reshape(3, 16, 16)
    manual = attention_module.proj(attention_module.norm(manual))
    assert torch.allclose(manual, attention_module(normed), atol=1e-5)


def _toy_series(tmp_path, frames=60):
    import xarray as xr

    rng = np.random.default_rng(3)
    values = rng.random((frames, 1, 8, 8)).astype(np.float32)
    field = xr.DataArray(values, dims=("time", "channel", "y", "x"), name="v", attrs={"units": "1", "long_name": "v"})
    config = {"kind": "toy", "split": {"train": 0.6, "val": 0.2, "test": 0.2}}
    dataset = build_processed(field, config, "toy")
    path = tmp_path / "toy.nc"
    dataset.to_netcdf(path)
    return load_series(path)


def test_shuffled_loader_returns_each_mask_to_its_own_sample(tmp_path):
    series = _toy_series(tmp_path)
    windows = WindowDataset(series, "train", 3, 2, 1)
    model = UpstreamViT(frames=3, channels=1, height=8, width=8, patch_size=2, embed_dim=16, depth=1, num_heads=2,
                        mlp_ratio=2.0).eval()
    index_ordered, ordered = compute_importance(model, windows, [-1], batch_size=5, dataset_name="toy")
    index_shuffled, shuffled = compute_importance(model, windows, [-1], batch_size=5, dataset_name="toy",
                                                  shuffle=True,
                                                  generator=torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(index_ordered, windows.starts)
    np.testing.assert_array_equal(index_ordered, index_shuffled)
    np.testing.assert_allclose(ordered, shuffled, atol=1e-6)
    # and each row is the importance of its own window, computed alone
    for row in (0, 7, len(windows) - 1):
        _, alone_inputs, _ = windows[row]
        attention = model.attention_maps(alone_inputs[None], [-1])
        alone = normalise_per_step(column_importance(attention).mean(0)).reshape(3, 4, 4)
        # the fast path sums in another order; min-max over near-uniform attention magnifies rounding
        np.testing.assert_allclose(ordered[row], alone.numpy(), atol=1e-5)
    # windows differ, so a mispairing would be visible
    assert not np.allclose(ordered[0], ordered[1])


def _toy_model() -> UpstreamViT:
    torch.manual_seed(0)
    return UpstreamViT(frames=3, channels=1, height=8, width=8, patch_size=2, embed_dim=16, depth=1, num_heads=2,
                       mlp_ratio=2.0).eval()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_model_weights_make_compute_importance_raise(tmp_path, value):
    series = _toy_series(tmp_path)
    windows = WindowDataset(series, "train", 3, 2, 1)
    model = _toy_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)
    with pytest.raises(DivergedError, match=rf"^saliency toy: attention importance is nan for the window at source "
                                            rf"index {int(windows.starts[0])} \(.*nothing written"):
        compute_importance(model, windows, [-1], batch_size=5, dataset_name="toy")


def test_one_corrupt_window_is_named_by_its_source_index(tmp_path, monkeypatch):
    series = _toy_series(tmp_path)
    windows = WindowDataset(series, "train", 3, 2, 1)
    model = _toy_model()
    bad = int(windows.starts[7])
    original = model.column_importance
    calls = []

    def corrupt(inputs, layers):  # unshuffled batches of 5: row 7 is the second batch's third window
        scores = original(inputs, layers)
        calls.append(len(inputs))
        if len(calls) == 2:
            scores[2 * 3 + 1, 5] = float("inf")  # its step 1, patch 5
        return scores

    monkeypatch.setattr(model, "column_importance", corrupt)
    with pytest.raises(DivergedError, match=rf"saliency toy: attention importance is infinite for the window at "
                                            rf"source index {bad} "):
        compute_importance(model, windows, [-1], batch_size=5, dataset_name="toy")


def test_finite_equal_importances_still_map_to_zeros(tmp_path, monkeypatch):
    series = _toy_series(tmp_path)
    windows = WindowDataset(series, "train", 3, 2, 1)
    model = _toy_model()
    monkeypatch.setattr(model, "column_importance", lambda inputs, layers: torch.full((len(inputs) * 3, 16), 0.25))
    _, importance = compute_importance(model, windows, [-1], batch_size=5, dataset_name="toy")
    assert importance.shape == (len(windows), 3, 4, 4) and (importance == 0).all()


def _sharp_model(depth=3, heads=4, embed=32, seed=0) -> UpstreamViT:
    """Randomly initialised, with q/k weights scaled up so that attention is far from uniform."""
    torch.manual_seed(seed)
    model = UpstreamViT(frames=2, channels=1, height=16, width=16, patch_size=4, embed_dim=embed, depth=depth,
                        num_heads=heads, mlp_ratio=2.0).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * embed] *= 4
    return model


def _materialised_importance(model: UpstreamViT, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Independent reference: while timm's full forward runs (fused attention, through the head),
    take each block's normalised input and form softmax(q kᵀ · d^-½) with the block's own qkv
    weights, then the column mean over heads and queries, per block: {block: (B*T, L)}."""
    heads = model.config["num_heads"]
    head_dim = model.config["embed_dim"] // heads
    found: dict[int, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(model.blocks):
        def hook(module, args, normed, index=index, qkv=block.attn.qkv):
            rows, tokens, _ = normed.shape
            q, k, _ = torch.nn.functional.linear(normed, qkv.weight, qkv.bias).reshape(
                rows, tokens, 3, heads, head_dim).unbind(2)
            weights = torch.einsum("bihd,bjhd->bhij", q, k).mul(head_dim ** -0.5).softmax(dim=-1)
            found[index] = weights.sum(dim=(1, 2)) / (heads * tokens)

        handles.append(block.norm1.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found


@pytest.mark.parametrize("layers", [[-1], [1], [0], [0, -1], [2, 0, 1, -1]])
def test_fast_importance_equals_materialised_attention(layers):
    model = _sharp_model()
    x = torch.randn(3, 2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    reference = _materialised_importance(model, x)
    chosen = sorted({layer % 3 for layer in layers})
    expected = torch.stack([reference[index] for index in chosen]).mean(dim=0)
    fast = model.column_importance(x, layers)
    assert fast.shape == (6, 16)
    torch.testing.assert_close(fast, expected, atol=1e-6, rtol=0)
    # one frame per chunk gives the same
    torch.testing.assert_close(model.column_importance(x, layers, chunk_bytes=1), expected, atol=1e-6, rtol=0)
    # the explicit slow path agrees too
    torch.testing.assert_close(column_importance(model.attention_maps(x, layers)).mean(0), expected, atol=1e-6,
                               rtol=0)
    # the comparison can fail: every other layer set differs by far more than the tolerance
    for other in ([0], [1], [2], [0, 2]):
        if other != chosen:
            wrong = torch.stack([reference[index] for index in other]).mean(dim=0)
            assert (wrong - fast).abs().max() > 1e-3


def test_fast_importance_runs_nothing_after_the_last_chosen_weights():
    model = _sharp_model(depth=4)
    called: list[str] = []
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(lambda module, args, out, name=name: called.append(name))
    model.column_importance(torch.randn(2, 2, 1, 16, 16), [0, 2])
    # block 0 explicit and needed by block 1; block 1 timm's own forward; block 2 stops at its weights
    assert "blocks.0.attn.proj" in called and "blocks.0.mlp" in called and "blocks.1" in called
    assert "blocks.0" not in called and "blocks.1.attn" in called  # chosen blocks never call timm's forward
    assert "blocks.2.attn.qkv" in called
    after = [name for name in called if name.startswith(("blocks.2.attn.proj", "blocks.2.mlp", "blocks.2.norm2",
                                                         "blocks.3", "norm", "head"))]
    assert after == []
