"""Test-side stand-ins for the Kubernetes API server's admission of CRDs and custom objects,
each rule derived from (and naming) the Go source of k8s.io/apiextensions-apiserver."""
