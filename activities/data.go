package activities

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"dcd/internal/ahead"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/redact"
	"dcd/internal/store"
)

// processBuckets serves Activities whose Buckets field is nil.
var processBuckets store.Buckets

// buckets opens the buckets that absolute URLs in datasets name.
func (a *Activities) buckets() *store.Buckets {
	if a.Buckets != nil {
		return a.Buckets
	}
	return &processBuckets
}

// source is where the pass's datasets are read from.
func (a *Activities) source() dataset.Source {
	return dataset.Source{Bucket: a.Bucket, Buckets: a.buckets(), Mem: a.Mem, URL: a.StorageURL}
}

// ClassesInput names a classes file: a key in the worker's bucket or an
// absolute URL.
type ClassesInput struct {
	File string
}

// Classes reads a classes file: one class label per line, in the order of
// the target model's logits; blank lines are ignored.
func (a *Activities) Classes(ctx context.Context, in ClassesInput) ([]string, error) {
	data, err := a.buckets().ReadAtMost(ctx, a.Bucket, in.File, maxClassesFile)
	if errors.Is(err, store.ErrTooLarge) {
		return nil, invalid("config: classes_file: %q is over %d MiB: not a list of class names, one a line", in.File, maxClassesFile>>20)
	}
	if err != nil {
		if settingUnread(ctx, err) {
			return nil, invalid("config: classes_file: cannot read %q: %v", in.File, err)
		}
		return nil, err
	}
	return ParseClasses(in.File, data)
}

// maxClassesFile bounds a classes file: 40,000 names of a hundred bytes are
// 4 MB.
const maxClassesFile = 64 << 20

// ParseClasses parses a classes file's content; name is used in errors.
func ParseClasses(name string, data []byte) ([]string, error) {
	var classes []string
	seen := map[string]int{}
	// A file saved as "UTF-8 with BOM" would start its first class with it.
	text := strings.TrimPrefix(string(data), "\ufeff")
	for i, line := range strings.Split(text, "\n") {
		c := dataset.Label(line) // as the datasets' labels are read
		if c == "" {
			continue
		}
		if prev, ok := seen[c]; ok {
			return nil, invalid("config: classes_file: %q line %d repeats class %q of line %d", name, i+1, c, prev)
		}
		seen[c] = i + 1
		classes = append(classes, c)
	}
	if len(classes) < 2 {
		return nil, invalid("config: classes_file: %q needs at least 2 class labels, one per line, got %d", name, len(classes))
	}
	return classes, nil
}

// maxNamed bounds how many unreadable E_sample images an error lists.
const maxNamed = 5

// checkErrorSample fails when any E_sample image could not be read or
// decoded: a query that silently went missing would change the selection.
// The error names the images and why each was rejected.
func (a *Activities) checkErrorSample(ctx context.Context, run string, shards int, m ModelRef) error {
	// Each shard's manifest, then its rejects: two rounds of requests,
	// shardsAhead shards at once.
	read := ahead.Read(ctx, shards, shardsAhead, func(ctx context.Context, i int) ([]embed.Reject, error) {
		_, rejects, err := a.shardRejects(ctx, run, ErrorSample, i, m.Spec)
		return rejects, err
	}, nil)
	defer read.Stop()
	var bad []embed.Reject
	for range shards {
		rejects, err := read.Next()
		if err != nil {
			return err
		}
		bad = append(bad, rejects...)
	}
	if len(bad) == 0 {
		return nil
	}
	var sb strings.Builder
	for i, r := range bad[:min(len(bad), maxNamed)] {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%s: %s", redact.URL(r.URI), redact.Text(r.Reason))
	}
	if len(bad) > maxNamed {
		fmt.Fprintf(&sb, "; and %d more", len(bad)-maxNamed)
	}
	return invalid("data.error_sample: %d image(s) cannot be used, fix or remove them: %s", len(bad), sb.String())
}

// ApartInput names planned image sets that must not share an image, in
// order: a later set's image found in an earlier one is named.
type ApartInput struct {
	Run  string
	Sets []ApartSet
	// Classes, when set, are what the labels of test and E_heldout must
	// be: Evaluate fails on any other, but only after the pool's scan.
	Classes []string
}

// ApartSet is a planned dataset and its shard count.
type ApartSet struct {
	Name   string
	Shards int
	// Probe checks the set's images against the sets before it without
	// keeping them: train's, which may be millions, against test's and
	// E_heldout's.
	Probe bool `json:",omitempty"`
}

// TrainApartInput names the planned sets CheckTrainApart reads.
type TrainApartInput struct {
	Run                                    string
	TestShards, HeldoutShards, TrainShards int
}

// CheckTrainApart fails when a train image (by key) is a test or
// E_heldout image: accuracy on an image trained on measures nothing.
// Train's keys, which may be millions, are probed, not kept. (An activity
// of its own, not CheckApart's: a worker from before Probe would keep
// them all.)
func (a *Activities) CheckTrainApart(ctx context.Context, in TrainApartInput) error {
	return a.CheckApart(ctx, ApartInput{Run: in.Run, Sets: []ApartSet{
		{Name: ErrorHeldout, Shards: in.HeldoutShards},
		{Name: Test, Shards: in.TestShards},
		{Name: Train, Shards: in.TrainShards, Probe: true},
	}})
}

// CheckApart fails when an image (by key) is in two of the sets. E_sample,
// E_heldout and test must be distinct: a held-out image that is also a
// query has its neighbours trained on, and the held-out gain would
// measure the images the selection was built from. So must train and the
// sets evaluated: a test or E_heldout image trained on measures nothing.
// An image listed twice in test or E_heldout fails it too: it would count
// twice in the accuracy. With in.Classes, it fails too on a test or
// E_heldout label that is not a class, now rather than when they are
// evaluated, after the pool's scan and retraining.
func (a *Activities) CheckApart(ctx context.Context, in ApartInput) error {
	classes := dataset.NewClasses(in.Classes)
	// The sets' manifests are read ahead as one sequence, so the next
	// set's are not read only after the last of this one's.
	sets := make([]shardSet, len(in.Sets))
	for si, set := range in.Sets {
		sets[si] = shardSet{set.Name, set.Shards}
	}
	refs := shardRefs(sets)
	shards := ahead.Read(ctx, len(refs), shardsAhead, func(ctx context.Context, k int) (*dataset.Shard, error) {
		return a.readShard(ctx, ShardKey(in.Run, sets[refs[k].set].ds, refs[k].i))
	}, nil)
	defer shards.Stop()
	seen := map[string]string{}
	for _, ref := range refs {
		shard, err := shards.Next()
		if err != nil {
			return err
		}
		name := sets[ref.set].ds
		evaluated := name == Test || name == ErrorHeldout
		labeled := len(in.Classes) > 0 && evaluated
		for _, it := range shard.Items {
			if other, ok := seen[it.Key]; ok && other != name {
				return invalid("data.%s: image %s is also in data.%s; the two sets must hold different images, or accuracy on one measures the other", name, redact.URL(it.Key), other)
			} else if ok && evaluated {
				return invalid("data.%s: image %s is listed twice; list each image once, or its accuracy counts twice", name, redact.URL(it.Key))
			}
			if in.Sets[ref.set].Probe {
				continue
			}
			seen[it.Key] = name
			if labeled && classes.Index(it.Label) < 0 {
				return offClass(name, it, classes)
			}
		}
		heartbeat(ctx, name, ref.i)
	}
	return nil
}
