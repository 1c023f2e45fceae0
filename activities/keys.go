package activities

import (
	"fmt"
	"strings"
)

// Where a pass keeps its files in the workers' bucket (DESIGN.md's blob
// layout): everything of a run under runs/<id>/, the features cache, which
// passes share, under features/ (keyed by model and shard content: see
// features.Key).
//
//	runs/<id>/shards/<dataset>/000000.csv    ShardKey: a shard's manifest
//	runs/<id>/shards/<dataset>/index.json    ShardIndexKey: where the pool's shards begin
//	runs/<id>/shards/<dataset>/plan.json     planCheckpointKey: a plan under way
//	runs/<id>/topk/<scan>/000000.arrow       TopKKey: a pool shard's partial top-k
//	runs/<id>/topk-ranges/<scan>/a-b.arrow   TopKRangeKey: a batch of cached shards' partial
//	runs/<id>/methods/<method>/<file>        MethodKey: a compared method's files
//	runs/<id>/<file>                         RunKey: the pass's own (eval.json, report.html, ...)
//	features/<model>/<shard>.arrow           features.Key: a shard's features, cached
//	<feature file>.rejects.json, .parts/     rejectsKey, partKey: beside a cache entry

// RunKey is a file of the run.
func RunKey(run, name string) string { return "runs/" + run + "/" + name }

// ShardKey is the manifest of shard i of a dataset in a run.
func ShardKey(run, ds string, i int) string {
	return fmt.Sprintf("runs/%s/shards/%s/%06d.csv", run, ds, i)
}

// ShardIndexKey is the ShardIndex of a dataset in a run.
func ShardIndexKey(run, ds string) string {
	return fmt.Sprintf("runs/%s/shards/%s/index.json", run, ds)
}

// planCheckpointKey is where a plan stores how far it got (planCheckpoint).
func planCheckpointKey(run, ds string) string {
	return fmt.Sprintf("runs/%s/shards/%s/plan.json", run, ds)
}

// TopKKey is the partial top-k of pool shard i, of the scan named scan:
// each scan has its own folder, so that an earlier pass run under the
// same ID, or a straggling attempt of a pass ended, cannot leave its
// partial where this one's is read. An empty scan is the run's own
// folder, where passes started before the scans had names wrote them.
func TopKKey(run, scan string, i int) string {
	if scan == "" {
		return fmt.Sprintf("runs/%s/topk/%06d.arrow", run, i)
	}
	return fmt.Sprintf("runs/%s/topk/%s/%06d.arrow", run, scan, i)
}

// TopKRangeKey is the partial top-k of pool shards [first, end), which a
// CachedShards batch of the scan named scan writes in place of theirs
// (TopKKey).
func TopKRangeKey(run, scan string, first, end int) string {
	return fmt.Sprintf("%s%06d-%06d.arrow", topKRanges(run, scan), first, end)
}

// topKRanges is the folder of a scan's TopKRangeKey partials. Each scan
// has its own: a shard's partial is overwritten by every pass that
// searches it, but a range is written only by a scan whose batches cut
// the shards that way, so another's (an earlier pass run under the same
// ID, a straggling attempt of a pass ended) must never be taken for it.
func topKRanges(run, scan string) string { return fmt.Sprintf("runs/%s/topk-ranges/%s/", run, scan) }

// MethodKey is a file of one compared method:
// runs/<id>/methods/<method>/<name>, "dcd:x" written "dcd-x".
func MethodKey(run, method, name string) string {
	return RunKey(run, "methods/"+strings.ReplaceAll(method, ":", "-")+"/"+name)
}

// rejectsKey holds a feature file's rejected images, cached beside it.
func rejectsKey(featureKey string) string { return featureKey + ".rejects.json" }

// partKey is part i of a feature file being written, kept until the file
// is committed so that a retried attempt resumes after it.
func partKey(featureKey string, part int) string {
	return fmt.Sprintf("%s.parts/%06d.arrow", featureKey, part)
}
