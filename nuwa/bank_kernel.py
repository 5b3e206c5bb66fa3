"""The compiled DistriXplorer kernel (numba): one pass over a block of windows.

:func:`_intervene` streams each step of ``x`` to ``out`` with non-temporal stores (as memcpy
does: no read of the destination) and recomputes only the environmental patches of the sampled
steps, in float32 with the operation order of the numpy formulation :mod:`nuwa.bank` had before
(pairwise sum of the 8 weights, neighbours added in ``NEIGHBOUR_OFFSETS`` order, history in
``k`` order, no fused multiply-add), so the bank is bit-identical to that formulation's for the
same draws (finite inputs). :func:`nuwa.bank.apply_interventions` is its checked entry point;
the method (draws, masks, files) lives in :mod:`nuwa.bank`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

# the 8 spatial neighbours of a patch (dy, dx), in the order their terms are added
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
NEIGHBOUR_DY = np.array([dy for dy, _ in NEIGHBOUR_OFFSETS], dtype=np.int64)
NEIGHBOUR_DX = np.array([dx for _, dx in NEIGHBOUR_OFFSETS], dtype=np.int64)

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
def _intervene(x, out, environmental, sampled, weights, mix, step_weights, has_temporal, p, exclude,
               dys, dxs):  # pragma: no cover - compiled
    """out = x with the environmental patches of the sampled steps replaced; one pass over x.

    A step not sampled is streamed from x to out; a sampled step is copied into
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
            if not sampled[i, s]:
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


@njit(cache=True, nogil=True)
def _compare(x, out, p, changed, sums):  # pragma: no cover - compiled
    """What the kernel did to the bytes, from its output ``out`` against its input ``x``
    (both float32 (N, T, C, H, W), C-contiguous): ``changed[i, s, py, px] = 1`` where a pixel
    of the patch differs bit for bit (int8 (N, T, Py, Px), zeros on entry), and
    ``sums[i, ch] += Σ |out - x|`` over window ``i``'s channel ``ch`` (float64 (N, C), the
    difference taken in float64: exact for float32 operands; per window, so that a total over
    windows does not depend on how they were split into blocks). Pixels whose bits are equal
    add nothing (an unchanged NaN or infinity included). A row of pixels is first compared
    whole (vectorised XOR/OR), its patches only where it differs."""
    n, t, c, h, w = x.shape
    gx = w // p
    bits_x = x.view(np.uint32).reshape(x.size)
    bits_out = out.view(np.uint32).reshape(out.size)
    flat_x = x.reshape(x.size)
    flat_out = out.reshape(out.size)
    nothing = np.uint32(0)
    for i in range(n):
        for s in range(t):
            for ch in range(c):
                total = 0.0
                plane = ((i * t + s) * c + ch) * h * w
                for y in range(h):
                    row = plane + y * w
                    differ = nothing
                    for e in range(w):
                        differ |= _get(bits_x, row + e) ^ _get(bits_out, row + e)
                    if differ == nothing:
                        continue
                    for px in range(gx):
                        start = row + px * p
                        differ = nothing
                        for e in range(p):
                            differ |= _get(bits_x, start + e) ^ _get(bits_out, start + e)
                        if differ == nothing:
                            continue
                        changed[i, s, y // p, px] = 1
                        for e in range(p):
                            if _get(bits_x, start + e) != _get(bits_out, start + e):
                                total += abs(np.float64(_get(flat_out, start + e))
                                             - np.float64(_get(flat_x, start + e)))
                sums[i, ch] += total
