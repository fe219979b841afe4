import hashlib

from emoserve.files import HASH_BLOCK, file_sha256


def test_file_sha256_is_the_digest_of_the_whole_file_across_blocks(tmp_path):
    data = bytes(range(256)) * (HASH_BLOCK // 256 * 2 + 3)  # two full blocks and a partial one
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_file_sha256_of_an_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert file_sha256(path) == hashlib.sha256(b"").hexdigest()
