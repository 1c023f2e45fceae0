package activities

// shardsAhead is how many of a pool's shard manifests (and their small
// companions) an activity that goes through all of them reads ahead: a
// few MiB of them, and from a store that answers in 50 ms, 64 reads
// ahead go through 2,000 shards (4M images) in about 3 s.
const shardsAhead = 64

// featuresAhead is how many shards' feature files an activity that goes
// through a set's (training, evaluating) reads ahead: each holds a
// shard's features, up to 16 MB at d = 2,048.
const featuresAhead = 4
