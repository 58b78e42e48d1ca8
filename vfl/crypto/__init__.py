"""Array-level Paillier engine, interoperable with python-paillier (``phe``), on gmpy2.

Public API (everything else is internal)::

    generate_keypair(key_bits=2048, *, insecure_test_key=False) -> (PublicKey, PrivateKey)
    PublicKey.to_phe() / PublicKey.from_phe(pk) / .to_bytes() / .from_bytes(b)
    PrivateKey.to_phe() / PrivateKey.from_phe(sk)
    PublicKey.max_int == n // 3 - 1                     # signed plaintext bound, as in phe

    FixedPointCodec(frac_bits=32).encode(x, public_key=None) / .decode(ints, scale_bits=None)
    check_sum_bound(max_abs, terms, pk) / check_product_bound(max_abs_M, max_abs_v, length, pk)
    draw_mask(shape, bits, *, slack_bits=40)           # secrets; >= 40 bits statistical slack

    EncryptedArray  .to_bytes() / .from_bytes(data, pk) / .to_phe() / .from_phe(numbers, pk)
    RandomnessPool(pk, *, private_key=None, pool=None).precompute(k)  # uniform r^n
    RandomnessPool(pk, method="djn", short_exponent=False)  # opt-in, own key only

    encrypt_array(pk, ints, *, scale_bits=0, randomness=None, pool=None) -> EncryptedArray
    decrypt_array(sk, enc, *, pool=None) -> object array of signed ints
    decrypt_real(sk, enc) -> float64 array (divides by 2**enc.scale_bits)
    add(a, b) / add_plain(enc, ints) / mul_scalar(enc, ints, *, scale_bits=0) / sum(enc, axis)
    rerandomize(enc, *, randomness=None)
    plain_matmul_encrypted(M, enc_v, *, matrix_scale_bits=0, vector_bound=None,
                           method="auto", pool=None) -> [[M @ v]]
    PackingLayout(magnitude_bits, headroom_bits=0).pack / .unpack
    pack_encrypted(enc, layout) / decrypt_packed(sk, packed, layout, count, *, terms=1)
    pack_masked(enc, mask, layout, *, randomness=None) -> pack([[v + R]])
    WorkerPool(max_workers=None, *, min_items=32) / set_default_workers(n)

Exceptions (all ``CryptoError``): InsecureKeyError, InvalidCiphertextError, WrongKeyError,
FixedPointOverflowError, ShapeMismatchError, ScaleMismatchError.

Encrypted gradient exchange (the ``paillier-masked-gradient`` protocol,
:mod:`vfl.vertical.masked_gradient`), with ``J^T`` of shape (params, batch)::

    codec = FixedPointCodec(frac_bits=32)
    enc_delta = encrypt_array(pk, codec.encode(delta), scale_bits=32)     # active party
    g = plain_matmul_encrypted(codec.encode(J.T), enc_delta, matrix_scale_bits=32)  # passive
    mask = draw_mask(g.shape, bits=b)          # b bounds |g| (check_product_bound)
    layout = PackingLayout(magnitude_bits=b + 41)
    packed = pack_masked(g, mask, layout)      # few ciphertexts, one fresh encryption each
    plain = decrypt_packed(sk, packed, layout, g.size)                  # active party
    grad = codec.decode(plain - mask, scale_bits=64)                     # passive party
"""

from vfl.crypto.ciphertext import EncryptedArray
from vfl.crypto.codec import (
    STAT_SLACK_BITS,
    FixedPointCodec,
    check_product_bound,
    check_sum_bound,
    draw_mask,
    from_residues,
    to_residues,
)
from vfl.crypto.engine import (
    add,
    add_plain,
    decrypt_array,
    decrypt_packed,
    decrypt_real,
    encrypt_array,
    mul_scalar,
    pack_encrypted,
    pack_masked,
    plain_matmul_encrypted,
    rerandomize,
    sum,  # noqa: A004 - array-level sum of ciphertexts, as in numpy
)
from vfl.crypto.errors import (
    CryptoError,
    FixedPointOverflowError,
    InsecureKeyError,
    InvalidCiphertextError,
    ScaleMismatchError,
    ShapeMismatchError,
    WrongKeyError,
)
from vfl.crypto.keys import PrivateKey, PublicKey, generate_keypair
from vfl.crypto.packing import PackingLayout
from vfl.crypto.parallel import WorkerPool, set_default_workers
from vfl.crypto.randomness import RandomnessPool

__all__ = [
    "STAT_SLACK_BITS",
    "CryptoError",
    "EncryptedArray",
    "FixedPointCodec",
    "FixedPointOverflowError",
    "InsecureKeyError",
    "InvalidCiphertextError",
    "PackingLayout",
    "PrivateKey",
    "PublicKey",
    "RandomnessPool",
    "ScaleMismatchError",
    "ShapeMismatchError",
    "WorkerPool",
    "WrongKeyError",
    "add",
    "add_plain",
    "check_product_bound",
    "check_sum_bound",
    "decrypt_array",
    "decrypt_packed",
    "decrypt_real",
    "draw_mask",
    "encrypt_array",
    "from_residues",
    "generate_keypair",
    "mul_scalar",
    "pack_encrypted",
    "pack_masked",
    "plain_matmul_encrypted",
    "rerandomize",
    "set_default_workers",
    "sum",
    "to_residues",
]
