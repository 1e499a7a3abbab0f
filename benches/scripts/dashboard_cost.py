#!/usr/bin/env python3
"""The dashboard's cost on a node with 1,000 tenants (BENCHMARKS.md, "Dashboard"): mechad's
CPU over 30 s idle and over 30 s with one open page polling its six views every 2 s, its
RSS before and after, and view latencies. Runs as root (it switches to 1,000 uids).
usage: dashboard_cost.py [BIN_DIR]  (default /work/target/release)"""
import os, sys, time, json, subprocess, tempfile, urllib.request, socket, struct
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/python/src"))
import mecha
bin=sys.argv[1] if len(sys.argv) > 1 else "/work/target/release"
d=tempfile.mkdtemp(); os.chmod(d,0o755)
s=socket.socket(); s.bind(("127.0.0.1",0)); port=s.getsockname()[1]; s.close()
p=subprocess.Popen([bin+"/mechad","--socket",d+"/m.sock","--data-dir",d+"/data","--module-dir",bin,"--http",f"127.0.0.1:{port}"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
url=f"http://127.0.0.1:{port}"
while True:
    try:
        if urllib.request.urlopen(url+"/readyz",timeout=1).status==200: break
    except OSError: time.sleep(0.05)
def cpu():
    f=open(f"/proc/{p.pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
def rss():
    return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1])
for uid in range(40000,41000):
    pid=os.fork()
    if pid==0:
        try:
            os.setgroups([]); os.setgid(uid); os.setuid(uid); mecha.Client(d+"/m.sock").status()
        finally: os._exit(0)
    os.waitpid(pid,0)
time.sleep(1)
print(f"mechad RSS with 1000 tenants, dashboard never opened: {rss()} KiB")
c0=cpu(); time.sleep(30); c1=cpu()
print(f"idle 30 s: mechad CPU {c1-c0:.2f} s")
views=["/api/overview","/api/modules","/api/tenants?offset=0&limit=25&q=","/api/apps?offset=0&limit=25&q=","/api/events","/api/history"]
c0=cpu(); t0=time.monotonic(); lat=[]
while time.monotonic()-t0<30:
    for v in views:
        a=time.monotonic(); urllib.request.urlopen(url+v).read(); lat.append((time.monotonic()-a)*1000)
    time.sleep(2)
c1=cpu()
lat.sort()
print(f"one open page (6 views every 2 s) 30 s: mechad CPU {c1-c0:.2f} s; view p50 {lat[len(lat)//2]:.2f} ms max {lat[-1]:.2f} ms")
print(f"mechad RSS after: {rss()} KiB")
for v in ["/api/tenants?offset=0&limit=25","/api/modules"]:
    ts=[]
    for i in range(50):
        a=time.monotonic(); urllib.request.urlopen(url+v).read(); ts.append((time.monotonic()-a)*1000)
    ts.sort(); print(f"{v}: p50 {ts[25]:.2f} ms p99 {ts[49]:.2f} ms (50 in a row)")
p.terminate(); p.wait()
