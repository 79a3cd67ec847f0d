"""Transport: Arrow Flight connections between peers and their mutual-TLS material."""
