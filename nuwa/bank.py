"""Stage 4, bank: DistriXplorer interventions on environmental patches, as NetCDF.

For each training window and copy, each input step ``t`` is intervened with probability
``G(t) = exp(-(t - T)² / (2σ²))`` (``T`` = last input step). In an intervened step every
environmental patch ``z_j^t`` becomes ``λ·spatial + (1-λ)·temporal`` with ``λ ~ U(0, 1)``:

* spatial: its 8 neighbours at step ``t`` (clipped at the border; causal neighbours left out
  when ``exclude_causal_neighbours``), weights ``w ~ U(0, 1)`` normalised to sum to one;
* temporal: its own history ``z_j^{t-k}``, ``k = 1..K`` (only ``k ≤ t``), weights ``β^k``
  normalised to sum to one. At ``t = 0`` there is no history and the spatial part is used alone;
  where no neighbour qualifies the temporal part is used alone; with neither, the patch stays.

Causal patches are never changed. Neighbours and history are read from the original window.

The random draws (:func:`draw_interventions`: which steps, the neighbour weights, λ) are
separate from the arithmetic (:func:`apply_interventions`), so that the compiled kernel and
the plain per-patch loop of :mod:`nuwa.bench.bank` consume the same draws and can be compared
bit for bit. The kernel (numba) makes one pass over the windows: it streams each step to the
output with non-temporal stores (as memcpy does: no read of the destination) and recomputes
only the intervened environmental patches, in float32 with the operation order of the
numpy formulation this module had before (pairwise sum of the 8 weights, neighbours added in
``NEIGHBOUR_OFFSETS`` order, history in ``k`` order, no fused multiply-add), so the bank is
bit-identical to that formulation's for the same seed (finite inputs).

:func:`write_bank` streams a bank to NetCDF chunk by chunk, so that its peak memory does not
grow with the number of windows; :func:`generate_bank` builds the same bank in memory. The
file's ``augmented`` is contiguous and uncompressed, for training to read rows per batch.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

from nuwa.progress import progress
from nuwa.saliency import causal_mask, environment_count

NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def to_patches(frames: np.ndarray, patch_size: int) -> np.ndarray:
    """(N, T, C, H, W) -> (N, T, Py, Px, C, p, p)."""
    n, t, c, h, w = frames.shape
    p = patch_size
    return frames.reshape(n, t, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4, 6)


def from_patches(patches: np.ndarray) -> np.ndarray:
    """(N, T, Py, Px, C, p, p) -> (N, T, C, H, W)."""
    n, t, gy, gx, c, p, _ = patches.shape
    return patches.transpose(0, 1, 4, 2, 5, 3, 6).reshape(n, t, c, gy * p, gx * p)


def gaussian_step_probability(frames: int, sigma: float) -> np.ndarray:
    """G(t) = exp(-(t - T)^2 / (2 sigma^2)) for t = 0..frames-1, T = frames - 1."""
    steps = np.arange(frames, dtype=np.float64)
    return np.exp(-((steps - (frames - 1)) ** 2) / (2.0 * sigma**2))


def history_weights(frames: int, history: int, history_decay: float) -> np.ndarray:
    """(T, K) weights of z^{t-k}: beta^k where k <= t, rows normalised (row 0 is all zero)."""
    weights = np.zeros((frames, history), dtype=np.float64)
    for k in range(1, history + 1):
        weights[k:, k - 1] = history_decay**k
    totals = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)


def random_causal_mask(rng: np.random.Generator, shape: tuple[int, int, int, int], environment_ratio: float) -> np.ndarray:
    """The control: ⌊ρ·L⌋ environmental patches per step chosen uniformly at random."""
    n, t, gy, gx = shape
    return causal_mask(rng.random((n, t, gy * gx)), environment_ratio).reshape(shape)


WRITE_CHUNK_CACHE_BYTES = 4 * 2**20  # HDF5 chunk cache while write_bank writes (netCDF's default: 64 MiB)
# bank variables stored contiguous and uncompressed: training reads a batch's rows straight from the file
BANK_CONTIGUOUS = ("augmented",)
NEIGHBOUR_DY = np.array([dy for dy, _ in NEIGHBOUR_OFFSETS], dtype=np.int64)
NEIGHBOUR_DX = np.array([dx for _, dx in NEIGHBOUR_OFFSETS], dtype=np.int64)


@dataclass
class Draws:
    """The random part of one DistriXplorer copy of N windows (T steps, Py x Px patches).

    ``weights`` and ``mix`` are drawn for every patch, intervened or not, so that the random
    stream (and hence every later draw) does not depend on the data or the masks.
    """

    intervened: np.ndarray  # (N, T) bool: step sampled by G(t)
    weights: np.ndarray  # (N, T, Py, Px, 8) float32 ~ U(0, 1): raw neighbour weights, NEIGHBOUR_OFFSETS order
    mix: np.ndarray  # (N, T, Py, Px) float32 ~ U(0, 1): lambda

    def rows(self, rows: slice) -> Draws:
        return Draws(self.intervened[rows], self.weights[rows], self.mix[rows])


def draw_interventions(rng: np.random.Generator, shape: tuple[int, int, int, int], sigma: float) -> Draws:
    """Draw, in this fixed order: intervened steps, neighbour weights, lambda. ``shape`` = (N, T, Py, Px)."""
    n, t, gy, gx = shape
    intervened = rng.random((n, t)) < gaussian_step_probability(t, sigma)[None, :]
    weights = rng.random((n, t, gy, gx, len(NEIGHBOUR_OFFSETS)), dtype=np.float32)
    mix = rng.random((n, t, gy, gx), dtype=np.float32)
    return Draws(intervened, weights, mix)


def temporal_terms(frames: int, history: int, history_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 (T, K) history weights and (T,) bool: step has a temporal term."""
    step_weights = history_weights(frames, history, history_decay).astype(np.float32)
    return step_weights, step_weights.sum(axis=1) > 0


STREAM_LANES = 8  # floats per non-temporal vector store (32 bytes)


@intrinsic
def _stream_store(typingctx, dst, dst_index, src, src_index):  # pragma: no cover - compiled
    """dst[dst_index:+8] = src[src_index:+8] with one non-temporal (cache-bypassing) store.

    ``dst[dst_index]`` must be 32-byte aligned; ``src`` needs only float alignment. LLVM lowers
    it to ``vmovntps``/``movntps`` on x86 (``stnp`` on ARM), the store glibc's memcpy uses for
    large copies: it writes memory without first reading the destination lines into cache.
    """
    sig = types.void(dst, types.intp, src, types.intp)

    def codegen(context, builder, signature, args):
        dst_array = context.make_array(signature.args[0])(context, builder, args[0])
        src_array = context.make_array(signature.args[2])(context, builder, args[2])
        vector = llvm_ir.VectorType(llvm_ir.FloatType(), STREAM_LANES)
        source = builder.bitcast(builder.gep(src_array.data, [args[3]]), vector.as_pointer())
        target = builder.bitcast(builder.gep(dst_array.data, [args[1]]), vector.as_pointer())
        store = builder.store(builder.load(source, align=4), target, align=4 * STREAM_LANES)
        store.set_metadata("nontemporal", builder.module.add_metadata([llvm_ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _stream_store_one(typingctx, dst, dst_index, src, src_index):  # pragma: no cover - compiled
    """dst[dst_index] = src[src_index] with a non-temporal 4-byte store (``movnti`` on x86).

    For the unaligned ends of a streamed range: a cache line written partly by ordinary and
    partly by non-temporal stores costs a read and a flush; all-non-temporal lines cost neither.
    """
    sig = types.void(dst, types.intp, src, types.intp)

    def codegen(context, builder, signature, args):
        dst_array = context.make_array(signature.args[0])(context, builder, args[0])
        src_array = context.make_array(signature.args[2])(context, builder, args[2])
        word = llvm_ir.IntType(32)
        source = builder.bitcast(builder.gep(src_array.data, [args[3]]), word.as_pointer())
        target = builder.bitcast(builder.gep(dst_array.data, [args[1]]), word.as_pointer())
        store = builder.store(builder.load(source, align=4), target, align=4)
        store.set_metadata("nontemporal", builder.module.add_metadata([llvm_ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _get(typingctx, array, index):  # pragma: no cover - compiled
    """array.flat[index] for a C-contiguous array, without numba's negative-index wrap-around
    (which turns contiguous loops into gathers); the caller keeps 0 <= index < size."""
    sig = array.dtype(array, types.intp)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load(builder.gep(data, [args[1]]))

    return sig, codegen


@intrinsic
def _set(typingctx, array, index, value):  # pragma: no cover - compiled
    """array.flat[index] = value (C-contiguous, no wrap-around; 0 <= index < size)."""
    sig = types.void(array, types.intp, array.dtype)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store(args[2], builder.gep(data, [args[1]]))
        return context.get_dummy_value()

    return sig, codegen


def _float_vector(context, builder, array_type, array, index):
    """Pointer to the STREAM_LANES floats array.flat[index:index + STREAM_LANES] (LLVM IR)."""
    data = context.make_array(array_type)(context, builder, array).data
    vector = llvm_ir.VectorType(llvm_ir.FloatType(), STREAM_LANES)
    return builder.bitcast(builder.gep(data, [index]), vector.as_pointer())


def _splat(builder, value):
    vector = llvm_ir.VectorType(llvm_ir.FloatType(), STREAM_LANES)
    one = builder.insert_element(llvm_ir.Constant(vector, llvm_ir.Undefined), value, llvm_ir.IntType(32)(0))
    zeros = llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), STREAM_LANES), [0] * STREAM_LANES)
    return builder.shuffle_vector(one, llvm_ir.Constant(vector, llvm_ir.Undefined), zeros)


@intrinsic
def _add_scaled8(typingctx, dst, dst_index, src, src_index, scale):  # pragma: no cover - compiled
    """dst[i] = dst[i] + scale * src[i] for 8 floats: a multiply, then an add (no fused
    multiply-add), lane by lane exactly the scalar float32 arithmetic, in one vector."""
    sig = types.void(dst, types.intp, src, types.intp, types.float32)

    def codegen(context, builder, signature, args):
        target = _float_vector(context, builder, signature.args[0], args[0], args[1])
        source = _float_vector(context, builder, signature.args[2], args[2], args[3])
        product = builder.fmul(_splat(builder, args[4]), builder.load(source, align=4))
        builder.store(builder.fadd(builder.load(target, align=4), product), target, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _mix8(typingctx, dst, dst_index, first, second, index, weight, rest):  # pragma: no cover - compiled
    """dst[i] = weight * first[j] + rest * second[j] for 8 floats (j = index + i), unfused."""
    sig = types.void(dst, types.intp, first, second, types.intp, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        target = _float_vector(context, builder, signature.args[0], args[0], args[1])
        a = builder.load(_float_vector(context, builder, signature.args[2], args[2], args[4]), align=4)
        b = builder.load(_float_vector(context, builder, signature.args[3], args[3], args[4]), align=4)
        value = builder.fadd(builder.fmul(_splat(builder, args[5]), a), builder.fmul(_splat(builder, args[6]), b))
        builder.store(value, target, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_fence(typingctx):  # pragma: no cover - compiled
    """Order the non-temporal stores before anything that follows (they are weakly ordered)."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(cache=True, nogil=True)
def _stream_copy(dst, dst_start, src, src_start, length):  # pragma: no cover - compiled
    """dst[dst_start:+length] = src[src_start:+length] (flat float32), streaming where aligned."""
    address = dst.ctypes.data + 4 * dst_start
    if address % 4:  # not even float-aligned: plain copy
        for e in range(length):
            dst[dst_start + e] = src[src_start + e]
        return
    lead = min(((-address) % (4 * STREAM_LANES)) // 4, length)
    for e in range(lead):
        _stream_store_one(dst, dst_start + e, src, src_start + e)
    e = lead
    while e + STREAM_LANES <= length:
        _stream_store(dst, dst_start + e, src, src_start + e)
        e += STREAM_LANES
    while e < length:
        _stream_store_one(dst, dst_start + e, src, src_start + e)
        e += 1


@njit(cache=True, nogil=True)
def _intervene(x, out, environmental, intervened, weights, mix, step_weights, has_temporal, p, exclude,
               dys, dxs):  # pragma: no cover - compiled
    """out = x with the intervened environmental patches replaced; one pass over x.

    A step nobody intervenes on is streamed from x to out; an intervened step is copied into
    a step buffer (in cache), its patches are replaced there, and the buffer is streamed out.
    Every float is float32 and every operation is done in the order of the former numpy
    formulation, so the result is bit-identical to it (for finite inputs; a skipped term
    there was ``0 * neighbour``, which only matters for Inf/NaN).
    """
    n, t, c, h, w = x.shape
    gy = h // p
    gx = w // p
    step_size = c * h * w
    plane = h * w
    flat_x = x.reshape(x.size)
    flat_out = out.reshape(out.size)
    history = step_weights.shape[1]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    raw = np.empty(8, np.float32)
    norm = np.empty(8, np.float32)
    rows = np.empty(8, np.int64)
    cols = np.empty(8, np.int64)
    spatial = np.empty(p * p, np.float32)
    temporal = np.empty(p * p, np.float32)
    step = np.empty(step_size, np.float32)
    vector_end = p - p % STREAM_LANES  # pixels of a patch row done 8 at a time
    for i in range(n):
        for s in range(t):
            base = (i * t + s) * step_size
            if not intervened[i, s]:
                _stream_copy(flat_out, base, flat_x, base, step_size)
                continue
            for e in range(step_size):
                _set(step, e, _get(flat_x, base + e))
            has_time = has_temporal[s]
            depth = min(history, s)
            for py in range(gy):
                for px in range(gx):
                    if not environmental[i, s, py, px]:
                        continue
                    for j in range(8):
                        qy = py + dys[j]
                        qx = px + dxs[j]
                        value = zero
                        if 0 <= qy < gy and 0 <= qx < gx and ((not exclude) or environmental[i, s, qy, qx]):
                            value = weights[i, s, py, px, j]
                        raw[j] = value
                    # numpy's pairwise summation of 8 float32 values
                    total = ((raw[0] + raw[1]) + (raw[2] + raw[3])) + ((raw[4] + raw[5]) + (raw[6] + raw[7]))
                    has_space = total > zero
                    if not (has_space or has_time):
                        continue
                    count = 0
                    if has_space:
                        for j in range(8):
                            share = raw[j] / total
                            if share != zero:  # a zero weight adds +-0: nothing
                                norm[count] = share
                                rows[count] = (py + dys[j]) * p
                                cols[count] = (px + dxs[j]) * p
                                count += 1
                    if has_space and has_time:
                        lam = mix[i, s, py, px]
                    elif has_space:
                        lam = one
                    else:
                        lam = zero
                    rest = one - lam
                    corner = py * p * w + px * p  # the patch's first pixel within a plane
                    for ch in range(c):
                        # per pixel: neighbours added in order a = 0.., history in order k = 1..;
                        # rows of 8 pixels as one vector (LLVM's own vectorisation skips loops
                        # as short as a patch row)
                        for e in range(p * p):
                            _set(spatial, e, zero)
                            _set(temporal, e, zero)
                        for a in range(count):
                            share = norm[a]
                            source = base + ch * plane + rows[a] * w + cols[a]
                            for r in range(p):
                                for col in range(0, vector_end, STREAM_LANES):
                                    _add_scaled8(spatial, r * p + col, flat_x, source + r * w + col, share)
                                for col in range(vector_end, p):
                                    e = r * p + col
                                    _set(spatial, e, _get(spatial, e) + share * _get(flat_x, source + r * w + col))
                        for k in range(1, depth + 1):
                            beta = step_weights[s, k - 1]
                            source = base - k * step_size + ch * plane + corner
                            for r in range(p):
                                for col in range(0, vector_end, STREAM_LANES):
                                    _add_scaled8(temporal, r * p + col, flat_x, source + r * w + col, beta)
                                for col in range(vector_end, p):
                                    e = r * p + col
                                    _set(temporal, e, _get(temporal, e) + beta * _get(flat_x, source + r * w + col))
                        for r in range(p):
                            target = ch * plane + corner + r * w
                            for col in range(0, vector_end, STREAM_LANES):
                                _mix8(step, target + col, spatial, temporal, r * p + col, lam, rest)
                            for col in range(vector_end, p):
                                e = r * p + col
                                _set(step, target + col, lam * _get(spatial, e) + rest * _get(temporal, e))
            _stream_copy(flat_out, base, step, 0, step_size)
    _store_fence()


def _check_grid(shape: tuple[int, ...], causal_shape: tuple[int, ...], patch_size: int) -> None:
    n, t, _, h, w = shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"frames {h}x{w} are not a whole number of {patch_size}x{patch_size} patches")
    if tuple(causal_shape) != (n, t, h // patch_size, w // patch_size):
        raise ValueError(f"mask shape {tuple(causal_shape)} does not match the windows' patch grid "
                         f"{(n, t, h // patch_size, w // patch_size)}")


def apply_interventions(inputs: np.ndarray, causal: np.ndarray, draws: Draws, *, patch_size: int, history: int,
                        history_decay: float, exclude_causal_neighbours: bool,
                        out: np.ndarray | None = None) -> np.ndarray:
    """The arithmetic of one copy: (N, T, C, H, W) float32 windows with the drawn interventions applied.

    ``out`` (optional, C-contiguous float32, same shape, not ``inputs``) receives the result.
    """
    # writable too (a read-only array is copied): one compiled signature whatever the caller
    # passes, so processes compiling into numba's shared on-disk cache at once agree on its index
    x = np.require(inputs, dtype=np.float32, requirements=("C", "A", "W"))
    _check_grid(x.shape, causal.shape, patch_size)
    n, t = x.shape[:2]
    if (draws.intervened.shape != (n, t) or draws.mix.shape != causal.shape
            or draws.weights.shape != (*causal.shape, len(NEIGHBOUR_OFFSETS))):
        raise ValueError(f"draws for {draws.mix.shape} do not match the mask {causal.shape}")
    if out is None:
        out = np.empty_like(x)
    elif (out.shape != x.shape or out.dtype != np.float32 or not (out.flags.c_contiguous and out.flags.aligned)
          or np.may_share_memory(out, x)):
        raise ValueError("out must be a separate aligned C-contiguous float32 array of the inputs' shape")
    step_weights, has_temporal = temporal_terms(t, history, history_decay)
    _intervene(x, out, np.ascontiguousarray(causal == 0), np.ascontiguousarray(draws.intervened, dtype=bool),
               np.ascontiguousarray(draws.weights, dtype=np.float32), np.ascontiguousarray(draws.mix, dtype=np.float32),
               step_weights, has_temporal, int(patch_size), bool(exclude_causal_neighbours), NEIGHBOUR_DY,
               NEIGHBOUR_DX)
    return out


def distrixplorer(inputs: np.ndarray, causal: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                  sigma: float, history: int, history_decay: float,
                  exclude_causal_neighbours: bool) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of each window. Returns (augmented (N,T,C,H,W), intervened (N,T) bool)."""
    n, t, c, h, w = np.shape(inputs)
    _check_grid((n, t, c, h, w), causal.shape, patch_size)
    draws = draw_interventions(rng, causal.shape, sigma)
    augmented = apply_interventions(inputs, causal, draws, patch_size=patch_size, history=history,
                                    history_decay=history_decay, exclude_causal_neighbours=exclude_causal_neighbours)
    return augmented, draws.intervened


def _saliency_mask(method: str, importance, shape: tuple[int, int, int, int], ratio: float) -> np.ndarray | None:
    n, t, gy, gx = shape
    if method == "saliency":
        if importance is None or importance.shape != (n, t, gy, gx):
            got = None if importance is None else importance.shape
            raise ValueError(f"saliency importance shape {got} does not match windows {(n, t, gy, gx)}")
        return causal_mask(importance.reshape(n, t, gy * gx), ratio).reshape(n, t, gy, gx)
    if method != "random":
        raise ValueError(f"bank method must be 'saliency' or 'random', got {method!r}")
    return None


def _bank_chunks(n: int, copies: int, chunk: int) -> list[tuple[int, int, int]]:
    """(copy, start, stop) in drawing order; bank rows copy*n+start .. copy*n+stop."""
    return [(copy, start, min(start + chunk, n)) for copy in range(copies) for start in range(0, n, chunk)]


def _chunk_draws(rng, mask, start, stop, shape, ratio, sigma) -> tuple[np.ndarray, Draws]:
    """Mask (drawn first for 'random') and interventions of one chunk, in the bank's drawing order."""
    t, gy, gx = shape
    chunk_mask = mask[start:stop] if mask is not None else random_causal_mask(rng, (stop - start, t, gy, gx), ratio)
    return chunk_mask, draw_interventions(rng, chunk_mask.shape, sigma)


def generate_bank(inputs: np.ndarray, source_index: np.ndarray, *, method: str, settings: dict, patch_size: int,
                  rng: np.random.Generator, importance: np.ndarray | None = None,
                  desc: str = "bank") -> dict[str, np.ndarray]:
    """All copies for all windows, in memory. ``inputs`` (N, T, C, H, W) physical units, rows match ``source_index``.

    ``method`` 'saliency' takes the mask from ``importance`` (N, T, Py, Px) at the variant's
    environment ratio; 'random' draws it. Random numbers are drawn chunk by chunk in a fixed
    order, so the bank is a function of (params, seed) -- including ``chunk_size``.
    ``inputs`` may be any object with ``.shape`` whose slices ``inputs[a:b]`` give windows
    (see :class:`LazyWindows`). :func:`write_bank` writes the same bank without holding it.
    """
    n, t, c, h, w = inputs.shape
    _check_grid((n, t, c, h, w), (n, t, h // patch_size, w // patch_size), patch_size)
    gy, gx = h // patch_size, w // patch_size
    ratio = settings["environment_ratio"]
    mask = _saliency_mask(method, importance, (n, t, gy, gx), ratio)
    copies, chunk = settings["copies"], settings["chunk_size"]
    augmented = np.empty((copies * n, t, c, h, w), dtype=np.float32)
    intervened = np.empty((copies * n, t), dtype=np.int8)
    masks = np.empty((copies * n, t, gy, gx), dtype=np.int8)
    for copy, start, stop in progress(_bank_chunks(n, copies, chunk), desc=desc, unit="chunk"):
        rows = slice(copy * n + start, copy * n + stop)
        chunk_mask, draws = _chunk_draws(rng, mask, start, stop, (t, gy, gx), ratio, settings["sigma"])
        apply_interventions(inputs[start:stop], chunk_mask, draws, patch_size=patch_size,
                            history=settings["history"], history_decay=settings["history_decay"],
                            exclude_causal_neighbours=settings["exclude_causal_neighbours"], out=augmented[rows])
        intervened[rows] = draws.intervened
        masks[rows] = chunk_mask
    return {
        "augmented": augmented,
        "source_index": np.tile(np.asarray(source_index, dtype=np.int64), copies),
        "copy": np.repeat(np.arange(copies, dtype=np.int32), n),
        "intervened": intervened,
        "causal": masks,
    }


class LazyWindows:
    """(N, T, C, H, W) windows fetched on demand: ``fetch(start, stop)`` returns rows start..stop.

    ``LazyWindows(lambda a, b: train.inputs(starts[a:b]), (len(starts), T, C, H, W))`` lets
    :func:`write_bank` read the windows of one chunk at a time.
    """

    def __init__(self, fetch: Callable[[int, int], np.ndarray], shape: tuple[int, int, int, int, int]):
        self.fetch, self.shape = fetch, tuple(int(v) for v in shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("LazyWindows supports contiguous row slices only")
        return np.asarray(self.fetch(start, stop), dtype=np.float32)


class _StreamedBank:
    """The bank of :func:`generate_bank`, computed block by block in any order.

    A first pass makes every draw in the bank's order, keeping the masks, the intervened
    flags and the generator's state at the start of each chunk (not the large draws); a
    block of rows then redraws its chunks from those states and runs the kernel on its rows.
    """

    def __init__(self, inputs, *, method, settings, patch_size, rng, importance, progress_bar=None):
        n, t, c, h, w = inputs.shape
        _check_grid((n, t, c, h, w), (n, t, h // patch_size, w // patch_size), patch_size)
        self.inputs, self.settings, self.patch_size = inputs, settings, patch_size
        self.shape = (settings["copies"] * n, t, c, h, w)
        self.grid = (t, h // patch_size, w // patch_size)
        self.ratio = settings["environment_ratio"]
        self.mask = _saliency_mask(method, importance, (n, *self.grid), self.ratio)
        self.chunks = _bank_chunks(n, settings["copies"], settings["chunk_size"])
        self.bit_generator = type(rng.bit_generator)
        self.states = []
        self.intervened = np.empty(self.shape[:2], dtype=np.int8)
        self.masks = np.empty((self.shape[0], *self.grid), dtype=np.int8)
        for copy, start, stop in self.chunks:
            self.states.append(_copy.deepcopy(rng.bit_generator.state))
            chunk_mask, draws = _chunk_draws(rng, self.mask, start, stop, self.grid, self.ratio, settings["sigma"])
            rows = slice(copy * n + start, copy * n + stop)
            self.intervened[rows] = draws.intervened
            self.masks[rows] = chunk_mask
        self.progress_bar = progress_bar

    def rows(self, lo: int, hi: int) -> np.ndarray:
        n = self.inputs.shape[0]
        out = np.empty((hi - lo, *self.shape[1:]), dtype=np.float32)
        for (copy, start, stop), state in zip(self.chunks, self.states):
            first, last = max(lo, copy * n + start), min(hi, copy * n + stop)
            if first >= last:
                continue
            rng = np.random.Generator(self.bit_generator())
            rng.bit_generator.state = state
            chunk_mask, draws = _chunk_draws(rng, self.mask, start, stop, self.grid, self.ratio, self.settings["sigma"])
            within = slice(first - copy * n - start, last - copy * n - start)
            sources = slice(first - copy * n, last - copy * n)
            apply_interventions(self.inputs[sources], chunk_mask[within], draws.rows(within),
                                patch_size=self.patch_size, history=self.settings["history"],
                                history_decay=self.settings["history_decay"],
                                exclude_causal_neighbours=self.settings["exclude_causal_neighbours"],
                                out=out[first - lo:last - lo])
        if self.progress_bar is not None:
            self.progress_bar.update(hi - lo)
        return out


def write_bank(path: str | Path, inputs, source_index: np.ndarray, *, method: str, settings: dict, patch_size: int,
               rng: np.random.Generator, importance: np.ndarray | None = None, channels, units: str,
               dataset_name: str, variant: str, desc: str = "bank") -> int:
    """Write the bank of :func:`generate_bank` (same draws, same values) to NetCDF, streaming.

    ``augmented`` is computed and written in blocks of about ``chunk_size`` rows (a multiple of
    the ~2 MiB row count of :func:`nuwa.io.netcdf_chunks`), one block at a time on dask's
    synchronous scheduler (a fixed order: the same bytes on every run), through
    :func:`nuwa.io.write_netcdf` (atomic). ``augmented`` is stored contiguous and uncompressed
    (:data:`BANK_CONTIGUOUS`), so that training reads the rows of each batch from the file
    (:class:`nuwa.io.NetCDFRows`) instead of loading the bank. Peak memory: about two blocks of
    windows and outputs, and the int8 masks (1/(4·C·p²) of the bank); it does not grow with
    the windows' pixels. The values equal :func:`generate_bank`'s.
    ``inputs``: an array or :class:`LazyWindows`. Returns the number of bank rows.
    """
    import dask
    import dask.array as da
    import netCDF4

    from nuwa.io import netcdf_chunks, write_netcdf

    with progress(total=settings["copies"] * inputs.shape[0], desc=desc, unit="window") as bar:
        plan = _StreamedBank(inputs, method=method, settings=settings, patch_size=patch_size, rng=rng,
                             importance=importance, progress_bar=bar)
        total = plan.shape[0]
        leading = netcdf_chunks(plan.shape, 4)[0] if total else 1
        block = leading * max(1, settings["chunk_size"] // leading)
        bounds = [(lo, min(lo + block, total)) for lo in range(0, total, block)]
        name = f"nuwa-bank-{dataset_name}-{variant}"
        graph = {(name, b, 0, 0, 0, 0): (plan.rows, lo, hi) for b, (lo, hi) in enumerate(bounds)}
        chunks = (tuple(hi - lo for lo, hi in bounds), *((d,) for d in plan.shape[1:]))
        augmented = (da.Array(graph, name, chunks=chunks, dtype=np.float32) if total
                     else np.zeros(plan.shape, dtype=np.float32))
        n = inputs.shape[0]
        bank = {"augmented": augmented,
                "source_index": np.tile(np.asarray(source_index, dtype=np.int64), settings["copies"]),
                "copy": np.repeat(np.arange(settings["copies"], dtype=np.int32), n),
                "intervened": plan.intervened, "causal": plan.masks}
        dataset = bank_dataset(bank, channels=channels, units=units, method=method, settings=settings,
                               patch_size=patch_size, dataset_name=dataset_name, variant=variant)
        # `augmented` is contiguous (no chunk cache); for any chunked variable HDF5 keeps written
        # chunks in its cache until evicted, and netCDF's default cache (64 MiB) would add up to
        # that much on large banks: a small one serves
        cache = netCDF4.get_chunk_cache()
        netCDF4.set_chunk_cache(WRITE_CHUNK_CACHE_BYTES)
        try:
            with dask.config.set(scheduler="synchronous"):
                write_netcdf(dataset, path, contiguous=BANK_CONTIGUOUS)
        finally:
            netCDF4.set_chunk_cache(*cache)
    return total


def bank_dataset(bank: dict[str, np.ndarray], *, channels, units: str, method: str, settings: dict,
                 patch_size: int, dataset_name: str, variant: str) -> xr.Dataset:
    n, t, c, h, w = bank["augmented"].shape
    gy, gx = h // patch_size, w // patch_size
    attrs = {
        "title": f"nuwa DistriXplorer bank: {dataset_name} / {variant}",
        "Conventions": "CF-1.10",
        "nuwa_dataset": dataset_name,
        "variant": variant,
        "method": method,
        "patch_size": int(patch_size),
        "environmental_patches_per_step": environment_count(gy * gx, settings["environment_ratio"]),
    }
    for key, value in settings.items():
        if key != "method":
            attrs[key] = int(value) if isinstance(value, bool) else value
    return xr.Dataset(
        {
            "augmented": (("bank_sample", "step", "channel", "y", "x"), bank["augmented"],
                          {"long_name": "augmented input window", "units": units}),
            "source_index": ("bank_sample", bank["source_index"],
                             {"long_name": "source window: index of its first time step in the processed dataset"}),
            "copy": ("bank_sample", bank["copy"], {"long_name": "augmented copy number of the source window"}),
            "intervened": (("bank_sample", "step"), bank["intervened"],
                           {"long_name": "step was intervened (temporal Gaussian decay sampling)",
                            "flag_values": np.array([0, 1], dtype=np.int8), "flag_meanings": "kept intervened"}),
            "causal": (("bank_sample", "step", "patch_y", "patch_x"), bank["causal"],
                       {"long_name": "patch role used for this sample", "flag_values": np.array([0, 1], dtype=np.int8),
                        "flag_meanings": "environmental causal"}),
        },
        coords={"bank_sample": np.arange(n, dtype=np.int64), "step": np.arange(t, dtype=np.int32),
                "channel": list(channels), "y": np.arange(h, dtype=np.int32), "x": np.arange(w, dtype=np.int32),
                "patch_y": np.arange(gy, dtype=np.int32), "patch_x": np.arange(gx, dtype=np.int32)},
        attrs=attrs,
    )
