raise RuntimeError("init blew up")
