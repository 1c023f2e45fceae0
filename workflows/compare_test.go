package workflows_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"image/jpeg"
	"io"
	"math"
	"os"
	"path"
	"reflect"
	"strings"
	"testing"
	"time"

	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/browser"
	"dcd/internal/dataset"
	"dcd/internal/features"
	"dcd/internal/head"
	"dcd/internal/onnx"
	"dcd/internal/preprocess"
	"dcd/schemas"
	"dcd/workflows"
)

// jpegCopy re-encodes an image of the bucket as a JPEG: the same picture,
// other bytes, as copies in a real pool are.
func jpegCopy(t *testing.T, b *blob.Bucket, key string) []byte {
	t.Helper()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	img, err := preprocess.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 92}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readCSV(t *testing.T, b *blob.Bucket, key string) [][]string {
	t.Helper()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(data)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// listKeys lists up to n object keys under prefix.
func listKeys(t *testing.T, b *blob.Bucket, prefix string, n int) []string {
	t.Helper()
	it := b.List(&blob.ListOptions{Prefix: prefix})
	var keys []string
	for len(keys) < n {
		obj, err := it.Next(context.Background())
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, obj.Key)
	}
	return keys
}

// A pool that holds JPEG copies of E_heldout images (leaks) and of its own
// E images (duplicates): the guards drop every copy the selection picks,
// naming the image it copies, and nothing else. A global-budget variant
// runs beside dcd in the same pass.
func TestGuardsDropCopies(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)
	ctx := context.Background()

	manifest := cfg.Data.Pool.Manifest
	dir := path.Dir(manifest)
	rows := readCSV(t, b, manifest)
	var out bytes.Buffer
	w := csv.NewWriter(&out)
	w.Write([]string{"uri", "label", "domain"})
	var blur [][]string
	for _, r := range rows[1:] {
		w.Write([]string{"/" + path.Join(dir, r[0]), r[1], r[2]})
		if r[2] == cfg.Selection.ErrorDomain {
			blur = append(blur, r)
		}
	}
	// Leaks: copies of E_heldout images, correctly labelled.
	leakOf := map[string]string{}
	for i, key := range listKeys(t, b, cfg.Data.ErrorHeldout.Prefix, 40) {
		label := path.Base(path.Dir(key))
		copyKey := fmt.Sprintf("guard/leak/%03d.jpg", i)
		if err := b.WriteAll(ctx, copyKey, jpegCopy(t, b, key), nil); err != nil {
			t.Fatal(err)
		}
		w.Write([]string{"/" + copyKey, label, cfg.Selection.ErrorDomain})
		leakOf[copyKey] = key
	}
	// Duplicates: copies of the pool's own E images.
	dupOf := map[string]string{}
	for i, r := range blur[:40] {
		key := path.Join(dir, r[0])
		copyKey := fmt.Sprintf("guard/dup/%03d.jpg", i)
		if err := b.WriteAll(ctx, copyKey, jpegCopy(t, b, key), nil); err != nil {
			t.Fatal(err)
		}
		w.Write([]string{"/" + copyKey, r[1], r[2]})
		dupOf[copyKey] = key
	}
	w.Flush()
	if err := b.WriteAll(ctx, "guard/manifest.csv", out.Bytes(), nil); err != nil {
		t.Fatal(err)
	}
	cfg.Data.Pool = schemas.Dataset{Manifest: "guard/manifest.csv"}
	cfg.Selection.Variants = map[string]schemas.SelectionVariant{"global": {Strategy: schemas.Global, Budget: 300}}
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodDCD, "dcd:global"}
	res, err := runPass(t, c, "guard-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}

	selected := map[string]bool{}
	for _, r := range readCSV(t, b, activities.MethodKey(res.RunID, schemas.MethodDCD, "selected.csv"))[1:] {
		selected[strings.TrimPrefix(r[0], "/")] = true
	}
	kept := map[string]bool{}
	for _, r := range readCSV(t, b, activities.MethodKey(res.RunID, schemas.MethodDCD, "debug_train.csv"))[1:] {
		kept[strings.TrimPrefix(r[0], "/")] = true
	}
	var leaks, dups int
	for _, r := range readCSV(t, b, activities.MethodKey(res.RunID, schemas.MethodDCD, "dropped.csv"))[1:] {
		key, reason, of := strings.TrimPrefix(r[0], "/"), r[1], strings.TrimPrefix(r[2], "/")
		t.Logf("dropped %s (%s of %s, relative distance %s)", key, reason, of, r[3])
		switch {
		case reason == "leak" && leakOf[key] == of:
			leaks++
		case reason == "duplicate" && (dupOf[key] == of || dupOf[of] == key):
			dups++
		default:
			t.Errorf("dropped %s as a %s of %s, which it is not a copy of", key, reason, of)
		}
	}
	pickedLeaks, pickedDups := 0, 0
	for key := range leakOf {
		if selected[key] {
			pickedLeaks++
		}
		if kept[key] {
			t.Errorf("leak %s (a copy of %s) is in the debug-train set", key, leakOf[key])
		}
	}
	for key, orig := range dupOf {
		if selected[key] && selected[orig] {
			pickedDups++
			if kept[key] && kept[orig] {
				t.Errorf("both %s and its copy %s are in the debug-train set", orig, key)
			}
		}
	}
	t.Logf("selection picked %d of %d leaks and %d of %d duplicate pairs; dropped %d and %d", pickedLeaks, len(leakOf), pickedDups, len(dupOf), leaks, dups)
	if pickedLeaks < 5 || pickedDups < 5 {
		t.Errorf("the selection picked %d leaks and %d duplicate pairs: too few for the test to mean anything", pickedLeaks, pickedDups)
	}
	// The variant runs beside dcd: the 300 candidates nearest any query,
	// less what its guards drop.
	none, global := method(t, res.Eval, schemas.MethodNone), method(t, res.Eval, "dcd:global")
	t.Logf("dcd:global: %d images, precision %.3f, E_heldout %.3f → %.3f", global.DebugTrainSize, *global.SelectionPrecision, none.HeldoutAccuracy, global.HeldoutAccuracy)
	if global.DebugTrainSize > 300 || global.DebugTrainSize < 250 || global.HeldoutAccuracy-none.HeldoutAccuracy < 0.2 {
		t.Errorf("dcd:global: %d images, E_heldout %.3f → %.3f", global.DebugTrainSize, none.HeldoutAccuracy, global.HeldoutAccuracy)
	}
	dcd := method(t, res.Eval, schemas.MethodDCD)
	if dcd.Leaks != leaks || dcd.Duplicates != dups || dcd.Leaks != pickedLeaks {
		t.Errorf("eval row counts %d leaks and %d duplicates; dropped.csv has %d and %d; %d leaks were picked", dcd.Leaks, dcd.Duplicates, leaks, dups, pickedLeaks)
	}
}

// writeTable prints the result table for the test log.
func writeTable(w io.Writer, ev activities.Eval) {
	fmt.Fprintf(w, "%-12s %8s %10s %6s %9s %7s\n", "method", "test", "E_heldout", "size", "precision", "wall s")
	for _, m := range ev.Methods {
		prec := "-"
		if m.SelectionPrecision != nil {
			prec = fmt.Sprintf("%.3f", *m.SelectionPrecision)
		}
		fmt.Fprintf(w, "%-12s %8.4f %10.4f %6d %9s %7.1f\n", m.Method, m.TestAccuracy, m.HeldoutAccuracy, m.DebugTrainSize, prec, m.WallSeconds)
	}
}

// checkExport runs the pass's exported dcd model (target backbone + new
// head, one ONNX file) on E_heldout images from storage and compares its
// classes and probabilities with the in-process head on the target's
// features of the same images.
func checkExport(t *testing.T, b *blob.Bucket, cfg schemas.Config, res workflows.PassResult, dcd activities.Method) {
	t.Helper()
	if dcd.Model == "" || dcd.Head == "" {
		t.Fatalf("dcd has no exported model (%q) or head (%q)", dcd.Model, dcd.Head)
	}
	data, err := b.ReadAll(context.Background(), activities.ShardKey(res.RunID, activities.ErrorHeldout, 0))
	if err != nil {
		t.Fatal(err)
	}
	shard, err := dataset.ParseShard("heldout", data)
	if err != nil {
		t.Fatal(err)
	}
	items := shard.Items[:min(200, len(shard.Items))]
	// The model is run as one deploying it would: its input made as its
	// metadata says.
	model, err := b.ReadAll(context.Background(), dcd.Model)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := onnx.Metadata(model)
	if err != nil {
		t.Fatal(err)
	}
	var pre preprocess.Spec
	if err := json.Unmarshal([]byte(meta["preprocess"]), &pre); err != nil || meta["input"] == "" {
		t.Fatalf("the exported model's metadata %v names no input or preprocessing (%v)", meta, err)
	}
	if want := cfg.Target.Preprocess.WithDefaults(); !reflect.DeepEqual(pre, want) {
		t.Errorf("the exported model's preprocessing is %+v, the pass's %+v", pre, want)
	}
	ref := func(path, input, output string) activities.ModelRef {
		return activities.ModelRef{Path: path, Spec: features.Spec{Input: input, Outputs: []string{output}, Preprocess: pre}}
	}
	probs := embedDirect(t, b, ref(dcd.Model, meta["input"], activities.ExportProbabilities), items)
	feats := embedDirect(t, b, ref(cfg.Target.Path, "image", cfg.Target.Features), items)
	hdata, err := b.ReadAll(context.Background(), dcd.Head)
	if err != nil {
		t.Fatal(err)
	}
	var h head.Head
	if err := json.Unmarshal(hdata, &h); err != nil {
		t.Fatal(err)
	}
	C := len(cfg.Classes)
	if len(probs) != len(items)*C || len(feats) != len(items)*h.Dim {
		t.Fatalf("%d probabilities and %d features for %d images", len(probs), len(feats), len(items))
	}
	agree, right := 0, 0
	for i, it := range items {
		p := probs[i*C : (i+1)*C]
		var sum float64
		best := 0
		for c, v := range p {
			sum += float64(v)
			if v > p[best] {
				best = c
			}
		}
		if math.Abs(sum-1) > 1e-4 {
			t.Fatalf("image %s: probabilities sum to %v", it.Key, sum)
		}
		want := h.Predict(feats[i*h.Dim : (i+1)*h.Dim])
		if best == want {
			agree++
		}
		if cfg.Classes[best] == it.Label {
			right++
		}
	}
	t.Logf("exported model: %d of %d E_heldout images classified as the head does, %d right", agree, len(items), right)
	if agree != len(items) {
		t.Errorf("the exported model disagrees with the in-process head on %d of %d images", len(items)-agree, len(items))
	}
}

// checkReport renders the pass's report in headless Chromium: no script or
// console errors, every thumbnail decodes, nothing fetched from elsewhere,
// every method in the table. DCD_REPORT_SCREENSHOT=file.png also saves a
// screenshot (the README's).
func checkReport(t *testing.T, page []byte, ev activities.Eval) {
	t.Helper()
	got, err := browser.Check(context.Background(), page)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Errors) > 0 || len(got.Broken) > 0 || len(got.External) > 0 {
		t.Errorf("report: errors %q, broken images %q, external URLs %q", got.Errors, got.Broken, got.External)
	}
	if got.Images < 16 || got.SVGShapes < 2*len(ev.Methods) {
		t.Errorf("report shows %d images and %d chart shapes", got.Images, got.SVGShapes)
	}
	for _, m := range ev.Methods {
		if !strings.Contains(got.Text, m.Method) {
			t.Errorf("report text lacks method %q", m.Method)
		}
	}
	if shot := os.Getenv("DCD_REPORT_SCREENSHOT"); shot != "" {
		if err := browser.Screenshot(context.Background(), page, shot, 1100, 2000); err != nil {
			t.Error(err)
		}
	}
}
