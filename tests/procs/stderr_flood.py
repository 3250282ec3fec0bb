"""Writes ``line <i>`` for i in range(N) to stderr in odd-sized chunks, then a final line without a newline,
then exits 3. Usage: stderr_flood.py N"""

import sys


def main() -> int:
    count = int(sys.argv[1])
    data = "".join(f"line {i}\n" for i in range(count)).encode() + b"last words"
    out = sys.stderr.buffer
    for start in range(0, len(data), 777):
        out.write(data[start : start + 777])
        out.flush()
    return 3


if __name__ == "__main__":
    sys.exit(main())
