package activities

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"

	"dcd/internal/browser"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/selection"
	"dcd/internal/store"
	"dcd/schemas"
)

func digitPNG(t *testing.T, seed int) []byte {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, 28, 28))
	for y := 4; y < 24; y++ {
		for x := 4 + seed%5; x < 10+seed%7; x++ {
			img.SetGray(x, y, color.Gray{Y: uint8(120 + 13*seed)})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ptr(v float64) *float64 { return &v }

// reportFixture writes what Report reads for a pass "r" over three
// classes: 4 E_sample queries with 3 neighbours each, one pool shard with
// a reject, the dcd method's debug-train set and dropped images, and
// eval.json.
func reportFixture(t *testing.T) (*Activities, ReportInput) {
	t.Helper()
	ctx := context.Background()
	b, err := blob.OpenBucket(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	a := &Activities{Bucket: b, Mem: mem}
	const run = "r"
	put := func(key string, data []byte) {
		if err := b.WriteAll(ctx, key, data, nil); err != nil {
			t.Fatal(err)
		}
	}
	classes := []string{"a", "b", "c"}
	var sample dataset.Shard
	var images []embed.Image
	for i := range 4 {
		key := fmt.Sprintf("es/%s/%d.png", classes[i%3], i)
		put(key, digitPNG(t, i))
		sample.Items = append(sample.Items, dataset.Item{ID: int64(i), Key: key, Label: classes[i%3]})
		images = append(images, embed.Image{URI: key})
	}
	put(ShardKey(run, ErrorSample, 0), sample.Marshal())
	rec := features.Record(mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{make([]float32, 8)}, Dims: []int{2}}, "")
	if err := store.WriteArrow(ctx, b, RunKey(run, "queries.arrow"), rec.Schema(), mem, rec); err != nil {
		t.Fatal(err)
	}
	rec.Release()

	var pool dataset.Shard
	for i := range 12 {
		key := fmt.Sprintf("pool/%02d.png", i)
		put(key, digitPNG(t, i+7))
		pool.Items = append(pool.Items, dataset.Item{ID: int64(i), Key: key, Label: classes[i%3], Domain: []string{"clean", "blur"}[i%2]})
	}
	put("pool/broken.png", []byte("not an image"))
	pool.Items = append(pool.Items, dataset.Item{ID: 12, Key: "pool/broken.png", Label: "a"})
	put(ShardKey(run, Pool, 0), pool.Marshal())
	spec := features.Spec{ModelDigest: "d", Input: "image", Outputs: []string{"features"}, Columns: []string{"features"}}
	rejects, _ := json.Marshal([]embed.Reject{{URI: "pool/broken.png", Reason: "decode: not an image"}})
	put(rejectsKey(features.Key(spec, pool.Digest())), rejects)

	nb := newNeighborBuilder(a)
	for q := range 4 {
		for r := range 3 {
			nb.add(int32(q), int32(r), float32(r+1)*0.5, pool.Items[(3*q+r)%12])
		}
	}
	nrec := nb.record()
	if err := store.WriteArrow(ctx, b, RunKey(run, "neighbors.arrow"), schemas.Neighbors, mem, nrec); err != nil {
		t.Fatal(err)
	}
	nrec.Release()
	nb.release()
	if err := a.writeSelection(ctx, MethodKey(run, "dcd", "debug_train.csv"), []selection.Chosen{{Item: pool.Items[0]}, {Item: pool.Items[4]}}); err != nil {
		t.Fatal(err)
	}
	put(MethodKey(run, "dcd", "dropped.csv"), []byte("uri,reason,of,relative_distance\n/pool/01.png,leak,/es/b/1.png,1e-05\n"))

	cls := func(v ...float64) []*float64 {
		out := make([]*float64, len(v))
		for i := range v {
			out[i] = ptr(v[i])
		}
		return out
	}
	ev := Eval{RunID: run, Classes: classes, TestImages: 300, HeldoutImages: 90,
		TestPerClassImages: []int{100, 100, 100}, HeldoutPerClassImages: []int{30, 30, 30},
		Methods: []Method{
			{Method: "none", TestAccuracy: 0.97, HeldoutAccuracy: 0.12, TestPerClass: cls(.98, .97, .96), HeldoutPerClass: cls(.1, .2, .06)},
			{Method: "random", TestAccuracy: 0.968, HeldoutAccuracy: 0.25, DebugTrainSize: 2, SelectionPrecision: ptr(0.5), WallSeconds: 1.2,
				TestPerClass: cls(.98, .96, .96), HeldoutPerClass: cls(.3, .3, .15)},
			{Method: "dcd", TestAccuracy: 0.969, HeldoutAccuracy: 0.8, DebugTrainSize: 2, SelectionPrecision: ptr(1), WallSeconds: 2.5, Leaks: 1,
				TestPerClass: cls(.98, .97, .957), HeldoutPerClass: cls(.8, .9, .7)},
		}}
	cfg := schemas.Config{Name: "unit", Classes: classes, Seed: 1}.WithDefaults()
	cfg.Compare = []string{"none", "random", "dcd"}
	evalKey, err := a.WriteEval(ctx, WriteEvalInput{Run: run, Eval: ev}) // the report reads it, as a pass's does
	if err != nil {
		t.Fatal(err)
	}
	return a, ReportInput{Run: run, Config: cfg, EvalKey: evalKey, PoolShards: 1, Similarity: ModelRef{Spec: spec}, SampleShards: 1, Reference: "dcd"}
}

// The report renders in headless Chromium without errors: every thumbnail
// decodes, nothing is fetched from elsewhere, the chart and the tables
// are there, the gallery marks what the guard dropped, and the rejects
// and the config are listed.
func TestReportRendersInChromium(t *testing.T) {
	a, in := reportFixture(t)
	res, err := a.Report(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rejects != 1 {
		t.Errorf("rejects %d, want 1", res.Rejects)
	}
	page, err := a.Bucket.ReadAll(context.Background(), res.ReportKey)
	if err != nil {
		t.Fatal(err)
	}
	got, err := browser.Check(context.Background(), page)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Errors) > 0 || len(got.Broken) > 0 || len(got.External) > 0 {
		t.Errorf("errors %q, broken images %q, external URLs %q", got.Errors, got.Broken, got.External)
	}
	// 4 queries + 12 neighbours, all data: URIs.
	if got.Images != 4+12 {
		t.Errorf("%d images, want 16", got.Images)
	}
	if got.SVGShapes < 6 {
		t.Errorf("the bar chart has %d shapes, want bars for 3 methods", got.SVGShapes)
	}
	for _, want := range []string{"dcd lifted E_heldout accuracy from 12.0% to 80.0%", "random", "dropped: leak", "pool/broken.png", "decode: not an image", "compare:", "+68.0"} {
		if !strings.Contains(got.Text, want) {
			t.Errorf("the page's text lacks %q", want)
		}
	}
	csv, _ := a.Bucket.ReadAll(context.Background(), res.RejectsKey)
	if !strings.Contains(string(csv), "pool/broken.png,decode: not an image") {
		t.Errorf("rejects.csv: %q", csv)
	}
}

// Rejects stream into rejects.csv shard by shard, every one of them in
// shard order (test's and E_heldout's first, train's last, each named
// with its set), while the page lists the first maxRejectsShown; a report that
// fails part way leaves the rejects.csv it had.
func TestReportRejectsStreamed(t *testing.T) {
	a, in := reportFixture(t)
	ctx := context.Background()
	// E_heldout's rejects, by the target's entries, come first, train's
	// last (it may list many images long gone).
	target := features.Spec{ModelDigest: "target", Input: "image", Outputs: []string{"logits"}, Columns: []string{"logits"}}
	heldout := dataset.Shard{Items: []dataset.Item{{ID: 0, Key: "h/missing.png", Label: "a"}, {ID: 1, Key: "h/ok.png", Label: "b"}}}
	gone, _ := json.Marshal([]embed.Reject{{URI: "h/missing.png", Reason: "unreadable: not found"}})
	train := dataset.Shard{Items: []dataset.Item{{ID: 0, Key: "tr/old.png", Label: "a"}}}
	old, _ := json.Marshal([]embed.Reject{{URI: "tr/old.png", Reason: "unreadable: not found"}})
	for key, v := range map[string][]byte{
		ShardKey(in.Run, ErrorHeldout, 0): heldout.Marshal(), rejectsKey(features.Key(target, heldout.Digest())): gone,
		ShardKey(in.Run, Train, 0): train.Marshal(), rejectsKey(features.Key(target, train.Digest())): old,
	} {
		if err := a.Bucket.WriteAll(ctx, key, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	in.Target, in.Embedded = ModelRef{Spec: target}, []ApartSet{{Name: Train, Shards: 1}, {Name: ErrorHeldout, Shards: 1}}
	want := []string{"uri,reason,dataset", "h/missing.png,unreadable: not found,error_heldout", "pool/broken.png,decode: not an image,pool"}
	for s, n := range []int{60, 40} {
		shard := dataset.Shard{Items: []dataset.Item{{ID: int64(100 + s), Key: fmt.Sprintf("more/%d.png", s), Label: "a"}}}
		var rejects []embed.Reject
		for i := range n {
			r := embed.Reject{URI: fmt.Sprintf("more/%d/%03d.png", s, i), Reason: "decode: truncated"}
			rejects = append(rejects, r)
			want = append(want, r.URI+","+r.Reason+",pool")
		}
		data, _ := json.Marshal(rejects)
		for key, v := range map[string][]byte{ShardKey(in.Run, Pool, s+1): shard.Marshal(), rejectsKey(features.Key(in.Similarity.Spec, shard.Digest())): data} {
			if err := a.Bucket.WriteAll(ctx, key, v, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	want = append(want, "tr/old.png,unreadable: not found,train")
	in.PoolShards = 3
	res, err := a.Report(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rejects != 101 || !maps.Equal(res.SetRejects, map[string]int{ErrorHeldout: 1, Train: 1}) {
		t.Errorf("%d pool rejects, %v of the other sets; want 101, and 1 of E_heldout and of train", res.Rejects, res.SetRejects)
	}
	csv, _ := a.Bucket.ReadAll(ctx, res.RejectsKey)
	if got := strings.Split(strings.TrimSpace(string(csv)), "\n"); !slices.Equal(got, want) {
		t.Errorf("rejects.csv has %d lines, want %d in shard order:\n%s", len(got), len(want), csv)
	}
	page, _ := a.Bucket.ReadAll(ctx, res.ReportKey)
	if !strings.Contains(string(page), "1 error_heldout images, 101 pool images, 1 train images could not be read or decoded and were skipped (the first 50 below") ||
		!strings.Contains(string(page), "h/missing.png") || !strings.Contains(string(page), "more/0/047.png") || strings.Contains(string(page), "more/0/048.png") {
		t.Errorf("the page does not list the first 50 of 102 rejects")
	}

	in.PoolShards = 4 // shard 3 was never planned
	if _, err := a.Report(ctx, in); err == nil {
		t.Fatal("a report over a missing pool shard succeeded")
	}
	if again, _ := a.Bucket.ReadAll(ctx, res.RejectsKey); !bytes.Equal(again, csv) {
		t.Errorf("a failed report changed rejects.csv:\n%s", again)
	}
}

// The config the report shows has a trainer command's signed URL without
// its token, as the trainer's log has it; the config passed in is left as
// it was.
func TestReportConfigRedactsTheTrainer(t *testing.T) {
	a, in := reportFixture(t)
	in.Config.Retrain.Trainer = &schemas.Trainer{Command: []string{"sh", "train.sh", "{model}", "https://weights.example.com/w.bin?sig=SECRET123"}, Output: "logits"}
	res, err := a.Report(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := a.Bucket.ReadAll(context.Background(), res.ReportKey)
	if strings.Contains(string(page), "SECRET123") || !strings.Contains(string(page), "https://weights.example.com/w.bin") {
		t.Errorf("the report's config shows the trainer's token, or not its URL")
	}
	if in.Config.Retrain.Trainer.Command[3] != "https://weights.example.com/w.bin?sig=SECRET123" {
		t.Errorf("the pass's config was changed: %q", in.Config.Retrain.Trainer.Command)
	}
}

// With many classes, the per-class tables show the 30 whose E_heldout
// accuracy changed most, in class order.
func TestShownClasses(t *testing.T) {
	ev := Eval{}
	var before, after []*float64
	for c := range 100 {
		ev.Classes = append(ev.Classes, fmt.Sprint(c))
		before = append(before, ptr(0.5))
		after = append(after, ptr(0.5+float64(c%50)/100)) // classes 40–49 and 90–99 change most
	}
	ev.Methods = []Method{{Method: "none", HeldoutPerClass: before}, {Method: "dcd", HeldoutPerClass: after}}
	got, ranked := shownClasses(ev, "dcd")
	if !ranked || len(got) != maxClassesShown || got[0] != 35 || got[len(got)-1] != 99 || got[14] != 49 || got[15] != 85 {
		t.Errorf("shown %v", got)
	}
	ev.Classes, ev.Methods[0].HeldoutPerClass, ev.Methods[1].HeldoutPerClass = ev.Classes[:10], before[:10], after[:10]
	if got, _ := shownClasses(ev, "dcd"); len(got) != 10 || got[9] != 9 {
		t.Errorf("10 classes: shown %v", got)
	}
	// Without none, nothing ranks them: the first 30.
	ev.Classes, ev.Methods = ev.Classes[:0], ev.Methods[1:]
	for c := range 100 {
		ev.Classes = append(ev.Classes, fmt.Sprint(c))
	}
	ev.Methods[0].HeldoutPerClass = after
	if got, ranked := shownClasses(ev, "dcd"); ranked || len(got) != maxClassesShown || got[0] != 0 || got[29] != 29 {
		t.Errorf("without none: shown %v, ranked %v; want the first 30, unranked", got, ranked)
	}
}

// The headline says which way E_heldout accuracy went.
func TestHeadlineSaysTheDirection(t *testing.T) {
	for _, c := range []struct {
		heldout float64
		want    string
	}{{0.8, "dcd lifted E_heldout accuracy from 50.0% to 80.0% (+30.0 points)"}, {0.5, "dcd left E_heldout"}, {0.4, "dcd lowered E_heldout accuracy from 50.0% to 40.0% (-10.0 points)"}} {
		ev := Eval{Methods: []Method{{Method: "none", HeldoutAccuracy: 0.5}, {Method: "dcd", HeldoutAccuracy: c.heldout}}}
		if got := headline(ev, "dcd"); !strings.Contains(got, c.want) {
			t.Errorf("E_heldout 0.5 → %v: %q, want %q", c.heldout, got, c.want)
		}
	}
	// Clean test accuracy that shows the same held; one that shows
	// otherwise went from one to the other.
	for _, c := range []struct {
		test float64
		want string
	}{{0.9738, "clean test accuracy held at 97.4%."}, {0.9700, "clean test accuracy went from 97.4% to 97.0% (-0.4)."}} {
		ev := Eval{Methods: []Method{{Method: "none", TestAccuracy: 0.9741}, {Method: "dcd", TestAccuracy: c.test}}}
		if got := headline(ev, "dcd"); !strings.Contains(got, c.want) {
			t.Errorf("test 0.9741 → %v: %q, want %q", c.test, got, c.want)
		}
	}
}

// A photo's thumbnail is its pixels' means, 64 pixels on its longer side;
// a file too large for one is said, not read.
func TestThumbnail(t *testing.T) {
	a, _ := reportFixture(t)
	ctx := context.Background()
	img := image.NewRGBA(image.Rect(0, 0, 2000, 1500))
	for y := range 1500 {
		for x := range 2000 {
			img.SetRGBA(x, y, color.RGBA{uint8(x * 255 / 1999), 100, uint8(y * 255 / 1499), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if err := a.Bucket.WriteAll(ctx, "photo.png", buf.Bytes(), nil); err != nil {
		t.Fatal(err)
	}
	src, err := a.thumbnail(ctx, "photo.png", make(chan struct{}, 1))
	if err != nil {
		t.Fatal(err)
	}
	data, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(string(src), "data:image/png;base64,"))
	if err != nil {
		t.Fatal(err)
	}
	th, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if b := th.Bounds(); b.Dx() != 64 || b.Dy() != 48 {
		t.Fatalf("thumbnail %v, want 64×48", b)
	}
	// Its left column is dark red, its right bright: the means of the
	// columns they cover.
	l, r := color.RGBAModel.Convert(th.At(0, 24)).(color.RGBA), color.RGBAModel.Convert(th.At(63, 24)).(color.RGBA)
	if l.R > 10 || r.R < 245 || l.G != 100 || r.G != 100 {
		t.Errorf("left %v, right %v", l, r)
	}
	if err := a.Bucket.WriteAll(ctx, "huge.png", make([]byte, thumbBytes+1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.thumbnail(ctx, "huge.png", make(chan struct{}, 1)); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("a file over %d bytes: %v, want it refused", thumbBytes, err)
	}
	// A decoder's bug on one image fails its thumbnail, not the worker,
	// and gives its decoding slot back.
	defer func(d func([]byte) (image.Image, error)) { decodeThumb = d }(decodeThumb)
	decodeThumb = func([]byte) (image.Image, error) { panic("index out of range") }
	slots := make(chan struct{}, 1)
	if _, err := a.thumbnail(ctx, "photo.png", slots); err == nil || !strings.Contains(err.Error(), "the decoder failed on this image (index out of range)") || len(slots) != 0 {
		t.Errorf("a decoder that panics: %v, %d slots taken; want the thumbnail failed, the slot free", err, len(slots))
	}
}

// A change in points keeps its sign however small: a loss of 0.03 points
// is -0.0, not +0.0 beside a cell marked down.
func TestPointsSign(t *testing.T) {
	for d, want := range map[float64]string{0.0003: "+0.0", -0.0003: "-0.0", 0: "+0.0", -0.012: "-1.2", 0.667: "+66.7"} {
		if got := points(0.2, 0.2+d); got != want {
			t.Errorf("points(0.2, 0.2%+v) = %q, want %q", d, got, want)
		}
	}
}

// An accuracy is shown as starter result rounds it (%.3f of the fraction),
// and a difference is that of the numbers shown: 1901/2000 = 0.9505 is
// 95.1 %, not 95.0 (100×0.9505 is 95.04999…), and from it to 0.941 is -1.0.
func TestPercentAsTheResultRoundsIt(t *testing.T) {
	for f, want := range map[float64]string{1901.0 / 2000: "95.1", 0.9245: fmt.Sprintf("%.1f", 100*0.924), 0.825: "82.5", 1: "100.0", 0: "0.0"} {
		if got := fmt.Sprintf("%.1f", percent(f)); got != want || fmt.Sprintf("%.1f", 100*mustFloat(t, fmt.Sprintf("%.3f", f))) != want {
			t.Errorf("percent(%v) = %s, want %s (starter result: %.3f)", f, got, want, f)
		}
	}
	if got := points(1901.0/2000, 0.941); got != "-1.0" {
		t.Errorf("points(0.9505, 0.941) = %s, want -1.0", got)
	}
}

func mustFloat(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// A reference selection that was empty ran no guard: the debug-train and
// dropped files under its method are an earlier run's under this ID, and
// the gallery marks nothing kept or dropped from them.
func TestGalleryIgnoresAnEarlierRunsGuard(t *testing.T) {
	a, in := reportFixture(t)
	ctx := context.Background()
	marks := func(debugTrain string) (kept, dropped int) {
		t.Helper()
		in.Eval = Eval{Methods: []Method{{Method: "dcd", DebugTrain: debugTrain}}}
		rows, err := a.gallery(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			for _, n := range r.Neighbors {
				switch {
				case n.Mark == "kept":
					kept++
				case strings.HasPrefix(n.Mark, "dropped"):
					dropped++
				}
			}
		}
		return kept, dropped
	}
	if kept, dropped := marks(MethodKey(in.Run, "dcd", "debug_train.csv")); kept == 0 || dropped == 0 {
		t.Fatalf("the guarded selection: %d kept, %d dropped marks; want both", kept, dropped)
	}
	empty := MethodKey(in.Run, "dcd", "selected.csv")
	if err := a.writeSelection(ctx, empty, nil); err != nil {
		t.Fatal(err)
	}
	if kept, dropped := marks(empty); kept != 0 || dropped != 0 {
		t.Errorf("an empty selection: %d kept, %d dropped marks, from an earlier run's files; want none", kept, dropped)
	}
}

// The per-class tables' caption says how their classes were chosen: by
// the reference's change against none, or, without both, the first ones.
func TestShownClassesCaption(t *testing.T) {
	for _, c := range []struct {
		ranked bool
		want   string
	}{{true, "The 30 of 40 classes whose E_heldout accuracy changed most under dcd;"}, {false, "The first 30 of 40 classes;"}} {
		var buf bytes.Buffer
		if err := reportPage.Execute(&buf, reportData{Classes: 40, Shown: 30, Ranked: c.ranked, Ref: "dcd"}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), c.want) {
			t.Errorf("ranked %v: the page lacks %q", c.ranked, c.want)
		}
	}
}

// A pass failed by a method writes the finished methods' eval.json and
// removes the report and rejects.csv an earlier pass under its ID left,
// whose numbers would contradict it; a complete eval.json leaves them to
// the report written after it.
func TestIncompleteEvalRemovesAnEarlierReport(t *testing.T) {
	ctx := context.Background()
	a := memActivities(t)
	stale := []string{RunKey("r", "report.html"), RunKey("r", "rejects.csv")}
	for _, complete := range []bool{true, false} {
		for _, key := range stale {
			put(t, a, key, []byte("an earlier pass's"))
		}
		if _, err := a.WriteEval(ctx, WriteEvalInput{Run: "r", Eval: Eval{RunID: "r", Incomplete: !complete, Failed: []string{"dcd"}}}); err != nil {
			t.Fatal(err)
		}
		for _, key := range stale {
			if there, _ := a.Bucket.Exists(ctx, key); there != complete {
				t.Errorf("complete %v: %s there %v, want %v", complete, key, there, complete)
			}
		}
	}
}
