"""paxos package."""
