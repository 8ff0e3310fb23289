"""oscrypto 1.3.0 cannot parse OpenSSL 3.0.1x version strings (two-digit
patch numbers), so it fails to load libcrypto. Upstream fixed the regex
after the release; this applies the same one-line fix to the virtualenv's
copy. Idempotent."""
import importlib.util
import pathlib

spec = importlib.util.find_spec("oscrypto")
root = pathlib.Path(spec.origin).parent / "_openssl"
old = "\\\\b(\\\\d\\\\.\\\\d\\\\.\\\\d[a-z]*)\\\\b"
new = "\\\\b(\\\\d+\\\\.\\\\d+\\\\.\\\\d+[a-z]*)\\\\b"
for name in ("_libcrypto_cffi.py", "_libcrypto_ctypes.py"):
    p = root / name
    text = p.read_text()
    if old in text:
        p.write_text(text.replace(old, new))
        print(f"patched {p}")
