"""The gRPC frontends: heddle.v1 and KServe v2, and the decoding and checks of their requests."""
