#!/usr/bin/env python3
"""Start-up time of mechad by hand: exec to the socket accepting, 10 starts, with an
optional configuration (BENCHMARKS.md, "Lazy modules").
usage: startup.py BIN_DIR [CONFIG]"""
import subprocess, time, os, tempfile, sys, statistics, socket
bin=sys.argv[1]; cfg=sys.argv[2] if len(sys.argv)>2 else None
ts=[]
for i in range(10):
    d=tempfile.mkdtemp()
    args=[bin+"/mechad","--socket",d+"/m.sock","--data-dir",d+"/data","--module-dir",bin]
    if cfg: args+=["--config",cfg]
    t=time.monotonic()
    p=subprocess.Popen(args,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    while True:
        try:
            s=socket.socket(socket.AF_UNIX); s.connect(d+"/m.sock"); s.close(); break
        except OSError: time.sleep(0.0005)
    ts.append((time.monotonic()-t)*1000)
    p.terminate(); p.wait()
print(f"startup ms: median {statistics.median(ts):.1f} min {min(ts):.1f} max {max(ts):.1f}")
