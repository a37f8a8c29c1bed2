# Helpers the ci/ scripts share (sourced, not run).

# A TCP port on 127.0.0.1 that is free now (the kernel picks it).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The median of the numbers on stdin, one per line (the lower middle of an even count).
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
