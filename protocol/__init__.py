"""What a client and the network agree on, imported by both sides and importing nothing of
the project: the job spec (spec.py), money in micro-credits (money.py), the maxima
(limits.py). The SDK (client/) ships with this package and no other of the server's."""
