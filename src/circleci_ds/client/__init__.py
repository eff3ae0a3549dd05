"""The CircleCI API v2 client: HTTP, its errors and limits, and the pacing of requests."""
