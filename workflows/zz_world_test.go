package workflows_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"dcd/internal/browser"
	"dcd/internal/demo"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/internal/store"
)

func TestZZFullDemo(t *testing.T) {
	c, _ := devServer(t)
	dir := t.TempDir()
	b, _ := store.Open(context.Background(), "file://"+dir+"?create_dir=1")
	ortrun.Init(ortrun.DefaultLibrary())
	startWorker(t, c, b)
	cfg, err := demo.Build(context.Background(), b, mnist.DefaultDir(), demo.Options{}, ortrun.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	res, err := runPass(t, c, "demo-blur-"+time.Now().UTC().Format("20060102-150405"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	writeTable(&sb, res.Eval)
	t.Logf("\n%s", sb.String())
	ev, _ := b.ReadAll(context.Background(), res.EvalKey)
	os.WriteFile("/tmp/full-eval.json", ev, 0o644)
	page, _ := b.ReadAll(context.Background(), res.ReportKey)
	os.WriteFile("/tmp/full-report.html", page, 0o644)
	if err := browser.Screenshot(context.Background(), page, "/tmp/full-report.png", 1100, 1500); err != nil {
		t.Fatal(err)
	}
}
