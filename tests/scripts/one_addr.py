#!/usr/bin/env python3
"""2,500 connections from one source address (127.0.0.9) with the default [limits]: prints how
many are held and how many were answered with the back-off GoAway.
Usage: python3 tests/scripts/one_addr.py target/release/tether"""
import socket, subprocess, time, sys
bin=sys.argv[1]
open("/tmp/oa.toml","w").write('[server]\nlisten="127.0.0.1:0"\nshards=2\npin=false\n[session]\nlogin_timeout_ms=120000\n[api]\nlisten=""\n')
p=subprocess.Popen([bin,"--config","/tmp/oa.toml"],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL,text=True)
line=p.stdout.readline()
while not line.startswith("listening on"):
    line=p.stdout.readline()
host,port=line.strip().split()[-1].rsplit(":",1)
socks=[]
t0=time.time()
for i in range(2500):
    s=socket.socket(); s.bind(("127.0.0.9",0)); s.connect((host,int(port))); socks.append(s)
took=time.time()-t0
time.sleep(2)
back=0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(16)[:1]==b'\x0a': back+=1
    except BlockingIOError: pass
print(f"2500 connections from one address in {took:.2f}s: {2500-back} held, {back} got GoAway(Overloaded)")
p.kill()
