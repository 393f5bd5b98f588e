# Real work for Python 3.11 under the jail's seccomp policy and Landlock
# rules: json, asyncio with a subprocess, subprocess, files in /tmp, a
# thread, hashing. Prints "python ok" only when every step gave the
# expected answer.
import asyncio, hashlib, json, os, subprocess, tempfile, threading

assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]}

async def main():
    p = await asyncio.create_subprocess_exec("/bin/sh", "-c", "echo hi", stdout=asyncio.subprocess.PIPE)
    out, _ = await p.communicate()
    await asyncio.sleep(0.001)
    return out
assert asyncio.run(main()) == b"hi\n"
assert subprocess.check_output(["/bin/echo", "x"]) == b"x\n"
with tempfile.TemporaryDirectory() as d:
    with open(d + "/a", "w") as f:
        f.write("x")
    os.rename(d + "/a", d + "/b")
    assert os.listdir(d) == ["b"]
seen = []
t = threading.Thread(target=lambda: seen.append(1)); t.start(); t.join()
assert seen == [1]
assert len(hashlib.sha256(os.urandom(8)).hexdigest()) == 64
print("python ok")
