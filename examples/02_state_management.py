"""State management: each kernel keeps its own variables; kernels in one sandbox share
the filesystem."""

import pybox

with pybox.Sandbox() as sb:
    with sb.kernel() as first, sb.kernel() as second:
        first.run("x = 'first kernel'")
        second.run("x = 'second kernel'")
        print(first.run("print(x)").text)  # first kernel
        print(second.run("print(x)").text)  # second kernel

        first.run("open('note.txt', 'w').write('written by the first kernel')")
        print(second.run("print(open('note.txt').read())").text)

        second.restart()  # state gone, files stay
        print(second.run("print('x' in dir(), open('note.txt').read())").text)
