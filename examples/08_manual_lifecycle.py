"""Manual lifecycle: start() / stop(), a fixed host port, and a second process attaching
with pybox.Kernel.connect(host, port, token). A sandbox on a remote engine speaks TLS
with its own certificate: the second process gets it too (sb.gateway_certificate)."""

import subprocess
import sys

import pybox

sb = pybox.Sandbox(port=18931).start()
try:
    print("sandbox", sb.id[:12], "at", f"{sb.host}:{sb.port}")
    sb.run("shared_file = open('from-first-process.txt', 'w'); shared_file.write('hello'); shared_file.close()")

    attach = (
        "import sys, pybox\n"
        "certificate = sys.stdin.read() or None  # PEM, or nothing for a local sandbox\n"
        "with pybox.Kernel.connect(sys.argv[1], int(sys.argv[2]), sys.argv[3], certificate=certificate) as kernel:\n"
        "    print(kernel.run(\"print(open('from-first-process.txt').read())\").text)\n"
    )
    out = subprocess.run([sys.executable, "-c", attach, sb.host, str(sb.port), sb.token],
                         input=sb.gateway_certificate or "", capture_output=True, text=True, check=True)
    print("second process read:", out.stdout.strip())
finally:
    sb.stop()
