"""inferd server: the protocol-neutral core, model lifecycle, scheduling and front ends."""
