"""Where replicas come from: a static list, Kubernetes EndpointSlices or Pods, or DNS."""
