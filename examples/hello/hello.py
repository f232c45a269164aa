"""The hello job: upper-cases input.txt and reports what the provider gave it."""

import os
import time
from pathlib import Path

text = Path("input.txt").read_text(encoding="utf-8")
lines = text.splitlines()
print(f"read input.txt: {len(lines)} lines", flush=True)

upper = []
for i, line in enumerate(lines, 1):
    upper.append(line.upper())
    print(f"processed line {i}/{len(lines)}", flush=True)
    time.sleep(0.2)

devices = os.environ.get("CUDA_VISIBLE_DEVICES", "(not set)")
out = Path("out")
out.mkdir(exist_ok=True)
(out / "result.txt").write_text(
    "\n".join(upper) + f"\nlines: {len(lines)}\nCUDA_VISIBLE_DEVICES: {devices}\n",
    encoding="utf-8",
)
print(f"wrote out/result.txt (CUDA_VISIBLE_DEVICES={devices})", flush=True)
