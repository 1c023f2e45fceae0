package activities_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/devserver"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
	"dcd/schemas"
)

// resumeWith runs EmbedShard on shard 0 of the pool as an attempt retried
// after one that heartbeated progress (NextPart, Starts).
func (w *world) resumeWith(m activities.ModelRef, nextPart int, starts []int) (activities.EmbedShardResult, error) {
	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(devserver.QuietLogger())
	env := ts.NewTestActivityEnvironment()
	env.RegisterActivity(w.acts)
	env.SetHeartbeatDetails(struct {
		NextPart int
		Starts   []int
	}{nextPart, starts})
	var res activities.EmbedShardResult
	v, err := env.ExecuteActivity(w.acts.EmbedShard, activities.EmbedShardInput{Run: w.run, Dataset: activities.Pool, Shard: 0, Model: m, BatchSize: 3, PartSize: 4})
	if err == nil {
		err = v.Get(&res)
	}
	return res, err
}

// TestResumeChecksParts: a part left by another attempt, cut elsewhere,
// gone since, or damaged, is not copied into the entry: the shard is embedded again
// from its start, and the entry holds every image once. An entry is one
// record, however many batches and parts it was embedded in, so that a
// reader of a few rows finds its metadata in one place.
func TestResumeChecksParts(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	inner, _ := classifier(true)
	w.putModel("models/clf.onnx", inner)
	w.putImages("clf/", randomImages(8, 12, 4, 4))
	w.put("clf/a/004.png", []byte("not an image"))
	w.put("clf/a/005.png", []byte("not an image"))
	m, err := w.check(schemas.Config{Target: schemas.Model{Path: "models/clf.onnx", Features: "pooled", Logits: "logits"}}.WithDefaults().Target)
	if err != nil {
		t.Fatal(err)
	}
	full, err := w.embed(activities.Pool, "clf/", m)
	if err != nil {
		t.Fatal(err)
	}
	key := full.FeatureKey
	want, err := features.Load(ctx, w.b, key, "features", w.mem)
	if err != nil {
		t.Fatal(err)
	}
	records := func() int {
		f, err := store.OpenArrow(ctx, w.b, key, w.mem)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return f.NumRecords()
	}
	if n := records(); n != 1 {
		t.Fatalf("%d images in batches of 3 written as %d records, want one", full.Images, n)
	}
	// One record a row, to cut parts anywhere.
	f, err := store.OpenArrow(ctx, w.b, key, w.mem)
	if err != nil {
		t.Fatal(err)
	}
	var rows []arrow.Record
	for i := 0; i < f.NumRecords(); i++ {
		r, _ := f.Record(i)
		for j := int64(0); j < r.NumRows(); j++ {
			rows = append(rows, r.NewSlice(j, j+1))
		}
	}
	f.Close()
	defer func() {
		for _, r := range rows {
			r.Release()
		}
	}()
	part := func(p int) string { return fmt.Sprintf("%s.parts/%06d.arrow", key, p) }
	writePart := func(p int, recs []arrow.Record, rejects []embed.Reject) {
		if rejects == nil {
			rejects = []embed.Reject{}
		}
		rj, _ := json.Marshal(rejects)
		w.put(part(p)+".rejects.json", rj)
		if len(recs) > 0 {
			if err := store.WriteArrow(ctx, w.b, part(p), recs[0].Schema(), w.mem, recs...); err != nil {
				t.Fatal(err)
			}
		}
	}
	uncache := func() {
		w.b.Delete(ctx, key)
		w.b.Delete(ctx, key+".rejects.json")
	}
	bad := []embed.Reject{{URI: "clf/a/004.png", Reason: "x"}, {URI: "clf/a/005.png", Reason: "x"}}
	// rows: images 0-3, then 6 on (4 and 5 rejected).
	for _, c := range []struct {
		name     string
		setup    func()
		next     int
		starts   []int
		resumeAt int
	}{
		{"parts whole", func() {
			writePart(0, rows[0:4], nil)
			writePart(1, rows[4:6], bad)
		}, 2, []int{0, 4, 8}, 8},
		// An attempt wrote part 1 as images 4-7 and died before its
		// heartbeat; the next cut part 1 at 4-5, all rejected, and
		// heartbeated that: part 1's file is the first attempt's, and
		// must not be copied.
		{"stale part file", func() {
			writePart(0, rows[0:4], nil)
			writePart(1, rows[4:6], bad)
		}, 2, []int{0, 4, 6}, 6},
		{"part of other images", func() {
			writePart(0, rows[1:5], nil)
		}, 1, []int{0, 4}, 0},
		// A part gone (or stale, or damaged) after good ones: the shard
		// goes on from it, not from its start.
		{"part gone", func() {
			writePart(0, rows[0:4], nil)
		}, 2, []int{0, 4, 8}, 4},
		{"second part cut", func() {
			writePart(0, rows[0:4], nil)
			writePart(1, rows[4:6], bad)
			data, _ := w.b.ReadAll(ctx, part(1))
			w.put(part(1), data[:len(data)/2])
		}, 2, []int{0, 4, 8}, 4},
		// Damaged parts (a cut file, bad JSON) are not read again by
		// every retry, failing each: the shard starts over.
		{"part file cut", func() {
			writePart(0, rows[0:4], nil)
			data, _ := w.b.ReadAll(ctx, part(0))
			w.put(part(0), data[:len(data)/2])
		}, 1, []int{0, 4}, 0},
		{"part rejects not JSON", func() {
			writePart(0, rows[0:4], nil)
			w.put(part(0)+".rejects.json", []byte("[{"))
		}, 1, []int{0, 4}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			uncache()
			c.setup()
			res, err := w.resumeWith(m, c.next, c.starts)
			if err != nil {
				t.Fatal(err)
			}
			if res.Cached || res.ResumedFrom != c.resumeAt || res.Images != full.Images || res.Rejects != full.Rejects {
				t.Errorf("result %+v, want resumed from image %d, %d images and %d rejects", res, c.resumeAt, full.Images, full.Rejects)
			}
			got, err := features.Load(ctx, w.b, key, "features", w.mem)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got.URIs) != fmt.Sprint(want.URIs) {
				t.Errorf("entry holds %v, want %v", got.URIs, want.URIs)
			}
			if n := records(); n != 1 {
				t.Errorf("entry of parts and batches in %d records, want one", n)
			}
			for i := range got.Data {
				if got.Data[i] != want.Data[i] {
					t.Fatalf("value %d is %v, want %v", i, got.Data[i], want.Data[i])
				}
			}
			var left []string
			if err := store.List(ctx, w.b, &blob.ListOptions{Prefix: key + ".parts/"}, func(obj *blob.ListObject) error {
				left = append(left, obj.Key)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if len(left) > 0 {
				t.Errorf("parts left after the commit: %v", left)
			}
		})
	}
}

// classifierWorld is a world holding classifier(true) as its target,
// checked.
func classifierWorld(t *testing.T) (*world, activities.ModelRef) {
	w := newWorld(t)
	inner, _ := classifier(true)
	w.putModel("models/clf.onnx", inner)
	m, err := w.check(schemas.Config{Target: schemas.Model{Path: "models/clf.onnx", Features: "pooled", Logits: "logits"}}.WithDefaults().Target)
	if err != nil {
		t.Fatal(err)
	}
	return w, m
}

// A shard none of whose images can be read is not cached as all rejects
// (it would stay empty once the workers' access is fixed): it fails
// without retries, naming an image, and embeds once they can be read.
func TestUnreadableShardIsNotCached(t *testing.T) {
	w, m := classifierWorld(t)
	w.put("pool.csv", []byte("uri,label\nclf/a/000.png,a\nclf/a/001.png,a\nclf/a/002.png,b\n"))
	var plan activities.PlanResult
	w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: activities.Pool, Dataset: schemas.Dataset{Manifest: "pool.csv"}, ShardSize: 1 << 20}, &plan)
	in := activities.EmbedShardInput{Run: w.run, Dataset: activities.Pool, Shard: 0, Model: m, BatchSize: 3}
	var res activities.EmbedShardResult
	err := w.do(w.acts.EmbedShard, in, &res)
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), "clf/a/000.png") || !strings.Contains(err.Error(), "none of the 3 images") {
		t.Fatalf("a shard of images that are not there: %v, want a final error naming one", err)
	}

	w.putImages("clf/", randomImages(3, 2, 4, 4))
	if err := w.do(w.acts.EmbedShard, in, &res); err != nil || res.Cached || res.Images != 3 {
		t.Errorf("once the images are there: %+v, %v; want 3 embedded, not a cached entry", res, err)
	}

	// Written as Windows paths, they are said to be.
	w.put("windows.csv", []byte("uri,label\nclf\\a\\000.png,a\n"))
	w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: activities.Pool, Dataset: schemas.Dataset{Manifest: "windows.csv"}, ShardSize: 1 << 20}, &plan)
	err = w.do(w.acts.EmbedShard, in, &res)
	if err == nil || !strings.Contains(err.Error(), `clf\a\000.png`) || !strings.Contains(err.Error(), "a Windows path?") {
		t.Errorf("a shard of Windows paths: %v, want them said to be", err)
	}
}

// A shard whose images are all rejected has no feature file: one an
// earlier write left (an entry dropped for disagreeing with its rejects)
// goes when the shard is embedded again, or searches would read its rows.
func TestAllRejectedShardRemovesAnOldFeatureFile(t *testing.T) {
	w, m := classifierWorld(t)
	ctx := context.Background()
	w.put("pool.csv", []byte("uri,label\nclf/gone.png,a\nclf/bad.png,a\n"))
	w.put("clf/bad.png", []byte("not an image"))
	var plan activities.PlanResult
	w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: activities.Pool, Dataset: schemas.Dataset{Manifest: "pool.csv"}, ShardSize: 1 << 20}, &plan)
	in := activities.EmbedShardInput{Run: w.run, Dataset: activities.Pool, Shard: 0, Model: m, BatchSize: 2}
	var res activities.EmbedShardResult
	w.must(w.acts.EmbedShard, in, &res)
	if res.Images != 0 || res.Rejects != 2 {
		t.Fatalf("a shard of a missing and an undecodable image: %+v, want both rejected", res)
	}
	if err := w.b.WriteAll(ctx, res.FeatureKey, []byte("an older write's rows"), nil); err != nil {
		t.Fatal(err)
	}
	if err := w.b.Delete(ctx, res.FeatureKey+".rejects.json"); err != nil {
		t.Fatal(err)
	}
	w.must(w.acts.EmbedShard, in, &res)
	if there, err := w.b.Exists(ctx, res.FeatureKey); err != nil || there {
		t.Errorf("embedded again with every image rejected: the older feature file is there (%v, %v), want it gone", there, err)
	}
}

// A manifest member running past its archive's end is rejected alone: the
// members read in the same span, wholly inside the archive, are embedded.
func TestPackedMemberPastArchiveEnd(t *testing.T) {
	w, m := classifierWorld(t)
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	manifest := "uri,label\n"
	for i, img := range randomImages(5, 3, 4, 4) {
		var data bytes.Buffer
		if err := png.Encode(&data, img); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("%03d.png", i)
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(data.Len())}); err != nil {
			t.Fatal(err)
		}
		size := int64(data.Len())
		if i == 3 {
			size += 10_000 // the archive was cut, or the manifest is another's
		}
		manifest += fmt.Sprintf("pool.tar#%s@%d+%d,a\n", name, archive.Len(), size)
		tw.Write(data.Bytes())
	}
	tw.Close()
	w.put("pool.tar", archive.Bytes())
	w.put("pool.csv", []byte(manifest))
	var plan activities.PlanResult
	w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: activities.Pool, Dataset: schemas.Dataset{Manifest: "pool.csv"}, ShardSize: 1 << 20}, &plan)
	var res activities.EmbedShardResult
	if err := w.do(w.acts.EmbedShard, activities.EmbedShardInput{Run: w.run, Dataset: activities.Pool, Shard: 0, Model: m, BatchSize: 4}, &res); err != nil || res.Images != 3 || res.Rejects != 1 {
		t.Errorf("%+v, %v; want 3 images embedded and the one past the end rejected", res, err)
	}
}

// A worker that stops ends an embedding at its next part's end, which the
// retry (elsewhere) goes on from: not when the stop's grace cancels the
// part under way.
func TestEmbedStopsAtAPartWhenTheWorkerStops(t *testing.T) {
	w := newWorld(t)
	m := w.classifierTarget()
	w.putImages("p/", randomImages(21, 12, 4, 4))
	var plan activities.PlanResult
	w.must(w.acts.Plan, activities.PlanInput{Run: w.run, Name: activities.Pool, Dataset: schemas.Dataset{Prefix: "p/"}, ShardSize: 1 << 20}, &plan)

	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(devserver.QuietLogger())
	env := ts.NewTestActivityEnvironment()
	env.RegisterActivity(w.acts)
	stop := make(chan struct{})
	close(stop)
	env.SetWorkerStopChannel(stop)
	type progress struct {
		NextPart int
		Starts   []int
	}
	var beats []progress
	env.SetOnActivityHeartbeatListener(func(_ *activity.Info, d converter.EncodedValues) {
		var p progress
		d.Get(&p)
		beats = append(beats, p)
	})
	_, err := env.ExecuteActivity(w.acts.EmbedShard, activities.EmbedShardInput{Run: w.run, Dataset: activities.Pool, Shard: 0, Model: m, BatchSize: 3, PartSize: 4})
	var app *temporal.ApplicationError
	if err == nil || !strings.Contains(err.Error(), "the worker is stopping") || errors.As(err, &app) && app.NonRetryable() || len(beats) < 2 {
		t.Fatalf("embedding on a stopping worker: %v, heartbeats %+v; want it ended, retryable, after its first part", err, beats)
	}
	// The beat sent as it stops, the one a stopping worker's client may
	// still deliver, names the part (and so does the last).
	last := beats[len(beats)-1]
	if stopping := beats[len(beats)-2]; stopping.NextPart != 1 || last.NextPart != 1 {
		t.Fatalf("heartbeats as the worker stops %+v, then %+v; want both after the first part", stopping, last)
	}
	res, err := w.resumeWith(m, last.NextPart, last.Starts)
	// Batches of 3, a part cut once it holds 4: the first holds 6.
	if err != nil || res.ResumedFrom != 6 || res.Images != plan.Images {
		t.Errorf("the retry: %+v, %v; want it to go on from the first part's 6 images to all %d", res, err, plan.Images)
	}
}
