//! Node Classifier replication: group models, hostname transform, diff and plan.
