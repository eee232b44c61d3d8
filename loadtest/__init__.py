"""Load testing for kvgate: a vLLM replica simulator, the agent swarm generator and trace replay."""
