"""Lab tooling for tests, demos and benchmarks: network-namespace topologies, strongSwan peers,
tshark captures and decryption, iperf3/ping measurements. Imports agent and controller freely."""
