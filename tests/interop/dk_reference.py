"""DistillKit's compression code, verbatim, as the oracle the interop tests check against.

Copied from arcee-ai/DistillKit at commit a61c2e7d25c2e990d45832e12bd8542bdee9c810
(Apache-2.0): distillkit/compression/bitpack.py, config.py and
monotonic_logprobs.py, concatenated in that order with their imports of each
other removed. Not imported by offline-kd itself; needs torch and pydantic.
"""
# ruff: noqa

# ---- distillkit/compression/bitpack.py
import torch


def pack_to_bytes(
    x: torch.LongTensor,
    elem_bits: int,
) -> torch.ByteTensor:
    """
    Pack a tensor of integers into a byte tensor.

    Args:
        x (torch.LongTensor): The input tensor of integers, with shape (..., N).
        elem_bits (int): The number of bits per element. Must be between 1 and 64.

    Returns:
        torch.ByteTensor: The packed byte tensor, with shape (..., ceil(N * elem_bits / 8)).
    """
    assert 1 <= elem_bits <= 64, "elem_bits must be between 1 and 64"

    # Mask the input to elem_bits
    mask = (1 << elem_bits) - 1
    x = x & mask

    # Generate positions of each bit, from MSB to LSB within each element
    bit_positions = torch.arange(elem_bits - 1, -1, -1, device=x.device)

    # Expand each element into its constituent bits as uint8 (..., N, elem_bits)
    bits = ((x.unsqueeze(-1) >> bit_positions) & 1).to(torch.uint8)

    # Flatten the bits into a single bit stream (..., N * elem_bits)
    original_shape = x.shape
    bits = bits.view(*original_shape[:-1], -1)

    # Calculate padding needed to make total bits a multiple of 8
    total_bits = bits.size(-1)
    pad_length = (8 - (total_bits % 8)) % 8
    if pad_length > 0:
        bits = torch.nn.functional.pad(bits, (0, pad_length))
    bits = bits.contiguous()  # Ensure contiguous for efficient reshaping

    # Reshape into groups of 8 bits and convert to bytes
    bits = bits.view(*original_shape[:-1], -1, 8)
    # Precompute power as uint8 for efficiency
    power = torch.tensor(
        [128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=x.device
    )
    bytes = (bits * power).sum(dim=-1).to(torch.uint8)

    return bytes


def unpack_from_bytes(
    bytes_tensor: torch.ByteTensor,
    elem_bits: int,
    original_num_elements: int,
) -> torch.LongTensor:
    """
    Unpack a byte tensor back into the original integers.

    Args:
        bytes_tensor (torch.ByteTensor): The packed byte tensor, with shape (..., ceil(N * elem_bits / 8)).
        elem_bits (int): The number of bits per element used during packing. Must be between 1 and 64.
        original_num_elements (int): The number of elements in the original tensor along the last dimension (N).

    Returns:
        torch.LongTensor: The unpacked tensor of integers, with shape (..., N).
    """
    assert 1 <= elem_bits <= 64, "elem_bits must be between 1 and 64"
    assert original_num_elements >= 0, "original_num_elements must be non-negative"

    total_bits_needed = original_num_elements * elem_bits
    original_shape = bytes_tensor.shape
    M = original_shape[-1]
    total_bits_available = M * 8

    if total_bits_needed > total_bits_available:
        raise ValueError(
            f"original_num_elements {original_num_elements} with elem_bits {elem_bits} "
            f"requires {total_bits_needed} bits, but only {total_bits_available} available"
        )

    # Convert each byte to 8 bits (MSB to LSB) as uint8
    bit_positions = torch.arange(7, -1, -1, device=bytes_tensor.device)  # 7, 6, ..., 0
    bits = ((bytes_tensor.unsqueeze(-1) >> bit_positions) & 1).to(
        torch.uint8
    )  # (..., M, 8)
    bits_flat = bits.view(*original_shape[:-1], -1)  # (..., M*8)

    # Slice to get the needed bits and discard padding
    bits_needed = bits_flat[..., :total_bits_needed]

    # Reshape into (..., original_num_elements, elem_bits) ensuring contiguous
    new_shape = list(original_shape[:-1]) + [original_num_elements, elem_bits]
    bits_needed = bits_needed.contiguous().view(*new_shape)

    # Convert bits to integers using appropriate power tensor
    powers = 2 ** torch.arange(elem_bits - 1, -1, -1, device=bits_needed.device)
    result = (bits_needed * powers).sum(dim=-1).long()

    return result


# ---- distillkit/compression/config.py
from enum import Enum

import torch
from pydantic import BaseModel, Field, model_validator


class SpecialTerm(Enum):
    SQRT = "sqrt"
    EXP = "exp"


class TermDtype(Enum):
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    def bit_width(self) -> int:
        if self == TermDtype.FLOAT16:
            return 16
        elif self == TermDtype.BFLOAT16:
            return 16
        elif self == TermDtype.FLOAT32:
            return 32
        elif self == TermDtype.FLOAT64:
            return 64
        else:
            raise ValueError(f"Unsupported dtype: {self}")

    def dtype(self) -> torch.dtype:
        if self == TermDtype.FLOAT16:
            return torch.float16
        elif self == TermDtype.BFLOAT16:
            return torch.bfloat16
        elif self == TermDtype.FLOAT32:
            return torch.float32
        elif self == TermDtype.FLOAT64:
            return torch.float64
        else:
            raise ValueError(f"Unsupported dtype: {self}")


class QuantizationBin(BaseModel):
    scale_dtype: TermDtype = Field(
        ...,
        description="Data type for the scale value.",
    )
    element_bits: int = Field(
        ...,
        description="Number of bits per element.",
        gt=0,
        lte=64,
    )
    num_elements: int = Field(
        ...,
        description="Number of elements in the bin.",
        gt=0,
    )

    # note that element_bits can be anything from 1 to 64
    # *could* constrain it to 1-8, 16, 32, 64
    # but would be better not to


class DistributionQuantizationConfig(BaseModel):
    d: int = Field(
        ...,
        description="Dimension of the unquantized distribution.",
        gt=0,
    )
    k: int = Field(
        ...,
        description="Number of non-zero values in the quantized distribution.",
        gt=0,
    )
    exact_k: int = Field(
        ...,
        description="Number of top values to store unquantized.",
        ge=0,
    )
    exact_dtype: TermDtype = Field(
        TermDtype.FLOAT32,
        description="Data type for the top `exact_k` values.",
    )
    polynomial_terms: list[SpecialTerm | int] | None = Field(
        None,
        description="Terms to use in the polynomial approximation. Integer values represent power terms, "
        "SpecialTerm values represent special non-polynomial terms.",
    )
    term_dtype: TermDtype = Field(
        TermDtype.FLOAT32,
        description="Data type for the polynomial terms.",
    )
    residual_bins: list[QuantizationBin] = Field(
        ...,
        description="List of bins for quantized residuals.",
    )
    delta_encoding: bool = Field(True, description="Whether to use delta encoding.")
    error_diffusion: bool = Field(
        False,
        description="Whether to use error diffusion.",
    )
    normalize_t: bool = Field(
        default=False, description="Map t to [0,1] instead of [0,k]."
    )

    @model_validator(mode="after")
    def check_valid(self) -> "DistributionQuantizationConfig":
        if self.k < self.exact_k:
            raise ValueError("k must be >= exact_k")
        if (
            self.exact_k < self.k
            and (not self.polynomial_terms)
            and (not self.residual_bins)
        ):
            raise ValueError(
                "If exact_k < k, at least one of polynomial_terms or residual_bins must be provided."
            )
        approx_terms = self.k - self.exact_k
        bin_elems = sum([bin.num_elements for bin in self.residual_bins])
        if bin_elems > approx_terms:
            raise ValueError(
                "Sum of num_elements in residual_bins must be <= k - exact_k"
            )
        return self

    def logprob_bits(self) -> int:
        res = 0
        res += self.exact_k * self.exact_dtype.bit_width()
        res += len(self.polynomial_terms or []) * self.term_dtype.bit_width()
        for bin in self.residual_bins:
            bin_bits = bin.scale_dtype.bit_width() + bin.element_bits * bin.num_elements
            if bin_bits % 8 != 0:
                bin_bits += 8 - (bin_bits % 8)
            res += bin_bits
        if res % 8 != 0:
            res += 8 - (res % 8)
        return res

    def total_bits(self) -> int:
        lpb = self.logprob_bits()
        vocab_index_bits = int(
            torch.log2(torch.tensor(self.d, dtype=torch.float32)).ceil().item()
        )
        index_bytes = (self.k * vocab_index_bits + 7) // 8
        total = lpb + index_bytes * 8
        return total


class LegacyLogitCompressionConfig(BaseModel):
    """Configuration for legacy polynomial logit compression.

    Args:
        k (int): Total number of logits per token
        exact_k (int): Number of exact logits to keep
        polynomial_degree (int): Degree of the polynomial to approximate the remaining logits
        invert_polynomial (bool): Whether to invert the polynomial terms
        with_sqrt_term (bool): Whether to include a square root term in the polynomial
        term_dtype (str): Data type for the polynomial terms (float16, bfloat16, float32, float64)
    """

    k: int
    exact_k: int
    polynomial_degree: int
    vocab_size: int
    invert_polynomial: bool = True
    with_sqrt_term: bool = False
    term_dtype: str = "float32"


# ---- distillkit/compression/monotonic_logprobs.py
import torch



def _work_dtype(*inputs: torch.Tensor | None) -> torch.dtype:
    for x in inputs:
        if x is not None and x.dtype == torch.float64:
            return torch.float64
    return torch.float32


def _solve_least_squares(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    work_dtype = _work_dtype(A, B)

    # because for some reason torch.linalg.lstsq only works for full-rank matrices on GPU
    U, S, Vh = torch.linalg.svd(A.to(work_dtype), full_matrices=False)
    tol = 1e-5
    Spinv = torch.zeros_like(S)
    Spinv[S > tol] = 1 / S[S > tol]
    UhB = U.transpose(-1, -2) @ B.to(work_dtype)
    SpinvUhB = Spinv.unsqueeze(-1) * UhB
    return Vh.transpose(-1, -2) @ SpinvUhB


def polynomial_terms(
    terms: list[SpecialTerm | int],
    t: int,
    dtype: torch.dtype,
    device: torch.device,
    normalize_t: bool,
) -> torch.Tensor:
    assert all(isinstance(i, (int, SpecialTerm)) for i in terms), (
        "terms must be a list of integers or SpecialTerm instances"
    )
    if normalize_t:
        pts = torch.linspace(0, 1, steps=t, dtype=dtype, device=device)
    else:
        pts = torch.arange(t, dtype=dtype, device=device)
    X = torch.stack(
        [pts**i if isinstance(i, int) else getattr(torch, i.value)(pts) for i in terms],
        dim=-1,
    )
    return X


def fit_polynomial(
    values: torch.Tensor,
    terms: list[SpecialTerm | int],
    dtype: torch.dtype,
    normalize_t: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    work_dtype = _work_dtype(values)
    X = polynomial_terms(
        terms,
        values.shape[-1],
        dtype=work_dtype,
        device=values.device,
        normalize_t=normalize_t,
    )
    while len(X.shape) < len(values.shape):
        X = X.unsqueeze(0)

    y = values.unsqueeze(-1)
    coeffs = _solve_least_squares(X, y).squeeze(-1)

    coeffs_final = coeffs.to(dtype)
    approx = torch.sum(
        X.to(dtype) * coeffs_final.unsqueeze(-2),
        dim=-1,
    ).to(work_dtype)
    residual = values - approx.squeeze(-1)
    return coeffs_final, residual


def _get_quantize_range(element_bits: int):
    if element_bits == 1:
        quant_min = 0
        quant_max = 1
    else:
        quant_min = -(2 ** (element_bits - 1))
        quant_max = (2 ** (element_bits - 1)) - 1.0

    return quant_min, quant_max


def _get_quantize_scale_factors(values: torch.Tensor, element_bits: int):
    # Compute max absolute value for each group (..., 1)
    max_abs_val = torch.amax(torch.abs(values), dim=-1, keepdim=True)

    # Determine the maximum quantized absolute value based on element_bits
    if element_bits == 1:
        max_quant_abs = 1.0
    else:
        max_quant_abs = 2 ** (element_bits - 1)

    return max_abs_val, max_quant_abs


def error_diffuse_and_quantize(
    values: torch.Tensor,
    element_bits: int,
    scale_dtype: torch.dtype,
    error_buffer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.LongTensor]:
    """
    Quantize the input tensor to the specified number of bits per element using error diffusion.
    """
    original_shape = values.shape
    n = original_shape[-1]

    (max_abs_val, max_quant_abs) = _get_quantize_scale_factors(values, element_bits)

    # Calculate scale factor, avoiding division by zero
    scale_factor = torch.where(
        max_abs_val == 0, torch.ones_like(max_abs_val), max_abs_val / max_quant_abs
    )

    # Simulate output precision
    scale_factor = scale_factor.to(scale_dtype).to(values.dtype)

    # Scale the input values
    scaled_vals = values / scale_factor

    # Initialize error buffer and quantized tensor
    if error_buffer is None:
        error_buffer = torch.zeros_like(scaled_vals[..., 0])
    quantized_values = torch.zeros_like(scaled_vals, dtype=torch.long)

    quant_min, quant_max = _get_quantize_range(element_bits)

    # Process each element along the last dimension with error diffusion
    for i in range(n):
        current = scaled_vals[..., i] + error_buffer
        quantized_i = torch.round(current)
        quantized_i = torch.clamp(quantized_i, quant_min, quant_max)
        error = current - quantized_i
        error_buffer = error
        quantized_values[..., i] = (quantized_i - quant_min).to(torch.long)

    return scale_factor.to(scale_dtype), quantized_values, error_buffer


def error_diffuse_float(
    values: torch.Tensor,
    out_dtype: torch.dtype,
    error_buffer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    work_dtype = _work_dtype(values, error_buffer)
    values = values.to(work_dtype)
    if error_buffer is None:
        error_buffer = torch.zeros_like(values[..., 0])

    out_values = torch.zeros_like(values, dtype=out_dtype)
    n = values.shape[-1]
    for i in range(n):
        current = values[..., i] + error_buffer
        q = current.to(out_dtype)
        error = current - q.to(work_dtype)
        error_buffer = error
        out_values[..., i] = q

    return out_values, error_buffer


def quantize_naive(
    values: torch.Tensor,
    element_bits: int,
    scale_dtype: torch.dtype,
    error_buffer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.LongTensor]:
    """
    Naive quantization of the input tensor to the specified number of bits per element.
    """
    work_dtype = _work_dtype(values, error_buffer)
    values = values.to(work_dtype)

    (max_abs_val, max_quant_abs) = _get_quantize_scale_factors(values, element_bits)

    # Calculate scale factor, avoiding division by zero
    scale_factor = torch.where(
        max_abs_val == 0, torch.ones_like(max_abs_val), max_abs_val / max_quant_abs
    )

    # Simulate output precision
    scale_factor = scale_factor.to(scale_dtype).to(values.dtype)

    # Scale the input values
    scaled_vals = values / scale_factor

    # Quantize the scaled values
    quant_min, quant_max = _get_quantize_range(element_bits)
    quantized_values = (
        torch.round(scaled_vals).clamp(quant_min, quant_max) - quant_min
    ).to(torch.long)

    return (
        scale_factor,
        quantized_values,
        torch.zeros_like(scaled_vals[..., 0]),
    )


def dequantize(
    quantized_values: torch.LongTensor,
    scale: torch.Tensor,
    element_bits: int,
) -> torch.Tensor:
    """
    Dequantize the input tensor using the specified scale and number of bits per element.
    """
    if element_bits == 1:
        return (quantized_values.to(torch.float32) * 2.0 - 1.0) * scale
    quant_min, quant_max = _get_quantize_range(element_bits)
    dequantized_values = (quantized_values + quant_min).to(torch.float32) * scale
    return dequantized_values


def compress_monotonic_logprobs(
    logprobs: torch.Tensor,
    config: DistributionQuantizationConfig,
) -> torch.ByteTensor:
    """
    Compresses logprobs using the specified configuration.
    Args:
        logprobs (torch.Tensor): Log probabilities to compress, shape (batch_size, seq_len, k). Must be
            monotonically decreasing along the last dimension.
        config (DistributionQuantizationConfig): Configuration for compression.
    Returns:
        torch.ByteTensor: Compressed logprobs. Shape (batch_size, seq_len, ceil(config.total_bits() / 8)).
    """
    work_dtype = _work_dtype(logprobs)
    if config.delta_encoding:
        # Apply delta encoding
        # Logprobs are all <= 0 and monotonically decreasing
        # replace logprobs with their deltas with respect to previous value
        # the first value is unchanged
        if config.error_diffusion:
            work_dtype = torch.float64
        logprobs_work = logprobs.to(work_dtype)
        deltas = logprobs_work[..., 1:] - logprobs_work[..., :-1]
        deltas = torch.cat(
            [logprobs[..., :1], deltas],
            dim=-1,
        )
        if config.error_diffusion:
            logprobs, _ = error_diffuse_float(deltas, logprobs.dtype, error_buffer=None)
        else:
            logprobs = deltas.to(logprobs.dtype)

    chunks = []

    error_buffer = None
    if config.exact_k > 0:
        exact_values = logprobs[..., : config.exact_k].to(config.exact_dtype.dtype())
        chunks.append(
            exact_values.view(torch.uint8).reshape(
                *logprobs.shape[:-1],
                -1,
            ),
        )

    if config.polynomial_terms:
        approx_values = logprobs[..., config.exact_k : config.k]
        coeffs, residual = fit_polynomial(
            approx_values,
            config.polynomial_terms,
            dtype=config.term_dtype.dtype(),
            normalize_t=config.normalize_t,
        )

        coeffs = coeffs.to(config.term_dtype.dtype())
        coeff_bytes = coeffs.view(torch.uint8).reshape(
            *logprobs.shape[:-1],
            -1,
        )
        chunks.append(coeff_bytes)
    else:
        residual = logprobs[..., config.exact_k : config.k]

    cur_index = 0
    for bin in config.residual_bins:
        values = residual[..., cur_index : cur_index + bin.num_elements]
        if config.error_diffusion:
            scale, scaled, error_buffer = error_diffuse_and_quantize(
                values, bin.element_bits, bin.scale_dtype.dtype(), error_buffer
            )
        else:
            scale, scaled, error_buffer = quantize_naive(
                values, bin.element_bits, bin.scale_dtype.dtype(), error_buffer
            )

        scale = scale.to(bin.scale_dtype.dtype())
        scale_bytes = scale.view(torch.uint8).reshape(
            *logprobs.shape[:-1],
            -1,
        )
        chunks.append(scale_bytes)

        packed = pack_to_bytes(scaled, bin.element_bits)
        packed = packed.reshape(
            *logprobs.shape[:-1],
            -1,
        )
        chunks.append(packed)

        cur_index += bin.num_elements

    # return byte tensor
    return torch.cat(chunks, dim=-1)


def decompress_monotonic_logprobs(
    bytes: torch.ByteTensor,
    config: DistributionQuantizationConfig,
    out_dtype: torch.dtype | None = None,
    use_residual: bool = True,
) -> torch.Tensor:
    """
    Decompresses logprobs using the specified configuration.

    Args:
        bytes (torch.ByteTensor): Compressed logprobs, shape (batch_size, seq_len, num_bytes).
        config (DistributionQuantizationConfig): Configuration for decompression.
        out_dtype (torch.dtype | None): Data type for the output tensor. If None, uses the dtype for the
            exact values.
    Returns:
        torch.Tensor: Decompressed logprobs, shape (batch_size, seq_len, k).
    """
    device = bytes.device
    if out_dtype is None:
        out_dtype = config.exact_dtype.dtype()

    # Extract exact values
    if config.exact_k > 0:
        exact_dtype_torch = config.exact_dtype.dtype()
        bytes_per_exact = config.exact_dtype.bit_width() // 8
        exact_bytes = config.exact_k * bytes_per_exact
        exact_part = bytes[..., :exact_bytes].contiguous()
        exact_values = exact_part.view(dtype=exact_dtype_torch).reshape(
            *bytes.shape[:-1], config.exact_k
        )
        remaining_bytes = bytes[..., exact_bytes:]
    else:
        exact_values = torch.empty(
            (*bytes.shape[:-1], 0), dtype=out_dtype, device=device
        )
        remaining_bytes = bytes

    # Extract polynomial coefficients if applicable
    if config.polynomial_terms and len(config.polynomial_terms) > 0:
        term_dtype_torch = config.term_dtype.dtype()
        terms_count = len(config.polynomial_terms)
        coeff_bytes = terms_count * (config.term_dtype.bit_width() // 8)
        coeff_part = remaining_bytes[..., :coeff_bytes].contiguous()
        coeffs = coeff_part.view(dtype=term_dtype_torch).reshape(
            *remaining_bytes.shape[:-1], terms_count
        )
        remaining_bytes = remaining_bytes[..., coeff_bytes:]
    else:
        coeffs = None
        terms_count = 0

    # Process residual bins
    residuals = []
    for bin in config.residual_bins:
        # Extract scale
        scale_dtype_torch = bin.scale_dtype.dtype()
        scale_bytes = bin.scale_dtype.bit_width() // 8
        scale_part = remaining_bytes[..., :scale_bytes].contiguous()
        scale = scale_part.view(dtype=scale_dtype_torch).reshape(
            *remaining_bytes.shape[:-1], 1
        )
        remaining_bytes = remaining_bytes[..., scale_bytes:]

        # Extract and unpack elements
        num_elements = bin.num_elements
        element_bits = bin.element_bits
        packed_bits = num_elements * element_bits
        packed_bytes = (packed_bits + 7) // 8
        packed_part = remaining_bytes[..., :packed_bytes].contiguous()
        remaining_bytes = remaining_bytes[..., packed_bytes:]

        elements = unpack_from_bytes(packed_part, element_bits, num_elements)
        residual_bin = dequantize(
            elements,
            scale,
            element_bits,
        )
        residuals.append(residual_bin)

    # Combine residuals and pad if necessary
    approx_terms = config.k - config.exact_k
    sum_bin_elems = sum(bin.num_elements for bin in config.residual_bins)
    if use_residual and residuals:
        residual = torch.cat(residuals, dim=-1)
        if sum_bin_elems < approx_terms:
            residual = torch.nn.functional.pad(
                residual, (0, approx_terms - sum_bin_elems)
            )
    else:
        residual = torch.zeros(
            (*remaining_bytes.shape[:-1], approx_terms), dtype=out_dtype, device=device
        )

    # Compute polynomial approximation
    if (
        coeffs is not None
        and config.polynomial_terms
        and len(config.polynomial_terms) > 0
    ):
        X = polynomial_terms(
            terms=config.polynomial_terms,
            t=approx_terms,
            dtype=config.term_dtype.dtype(),
            device=device,
            normalize_t=config.normalize_t,
        )
        fit = torch.sum(
            X.to(coeffs.device, coeffs.dtype) * coeffs.unsqueeze(-2),
            dim=-1,
        )
        approx_values = fit + residual.to(out_dtype)
    else:
        approx_values = residual.to(out_dtype)

    logprobs = torch.cat([exact_values.to(out_dtype), approx_values], dim=-1)
    if config.delta_encoding:
        # Apply inverse delta encoding
        logprobs = torch.cumsum(logprobs.float(), dim=-1).to(out_dtype)
    return logprobs

