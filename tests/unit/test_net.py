"""Loopback ports for the servers the platform starts (ebr.net; serving.front claims blocks)."""


def test_free_ports_stay_out_of_the_ephemeral_range_and_the_claimed_blocks() -> None:
    """A port the OS hands out for bind(0) is one an outgoing connection may take first; and
    claim_ports' blocks start at PORT_FLOOR: free_port picks below both, and it binds."""
    import socket

    from ebr.net import _ephemeral, free_port
    from serving.front import PORT_FLOOR

    low, _ = _ephemeral()
    for _ in range(50):
        port = free_port()
        assert 10_000 <= port < min(low, PORT_FLOOR)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
