#!/usr/bin/env python3
"""Out of descriptors: the server runs under RLIMIT_NOFILE 200 and 300 clients connect and wait
12 s. Prints the server's CPU share, how many clients read the back-off GoAway, and the size of
its log. Usage: python3 tests/scripts/emfile.py target/release/tether"""
import socket, subprocess, time, os, sys
bin=sys.argv[1]
cfg="/tmp/emfile.toml"
open(cfg,"w").write('[server]\nlisten="127.0.0.1:0"\nshards=2\npin=false\n[session]\nlogin_timeout_ms=120000\n[api]\nlisten=""\n')
log=open("/tmp/emfile.log","w")
p=subprocess.Popen(["prlimit","--nofile=200:200",bin,"--config",cfg],stdout=subprocess.PIPE,stderr=log,text=True)
line=p.stdout.readline()
while not line.startswith("listening on"):
    line=p.stdout.readline()
addr=line.strip().split()[-1]; host,port=addr.rsplit(":",1)
def cpu():
    f=open(f"/proc/{p.pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
c0=cpu(); t0=time.time()
socks=[]
for i in range(300):
    s=socket.create_connection((host,int(port))); socks.append(s)
time.sleep(12)
answered=0
for s in socks:
    s.setblocking(False)
    try:
        d=s.recv(64)
        if d: answered+=1
    except BlockingIOError: pass
c1=cpu(); t1=time.time()
print(f"cpu {c1-c0:.2f}s over {t1-t0:.1f}s = {100*(c1-c0)/(t1-t0):.1f}% of a core; back-off answers {answered}")
p.kill(); p.wait(); log.close()
print("log lines", sum(1 for _ in open("/tmp/emfile.log")), "bytes", os.path.getsize("/tmp/emfile.log"))
