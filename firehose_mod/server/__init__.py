"""The label server: subscribeLabels, queryLabels, health, metrics and operator status."""
