package workflows_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"dcd/internal/dataset"
)

// Bad input fails the pass with a non-retryable error that names the field
// and what was wrong; a corrupt pool image is skipped, counted and listed.
func TestBadInput(t *testing.T) {
	c, _ := devServer(t)
	b, cfg := demoWorld(t)
	startWorker(t, c, b)
	ctx := context.Background()
	stamp := time.Now().UTC().Format("150405.000")

	failsNaming := func(t *testing.T, err error, want ...string) {
		t.Helper()
		var appErr *temporal.ApplicationError
		if !errors.As(err, &appErr) {
			t.Fatalf("got %v, want an application error", err)
		}
		if !appErr.NonRetryable() {
			t.Errorf("error %v is retryable: no retry can fix bad input", err)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not name %q", err, w)
			}
		}
	}

	t.Run("missing model file", func(t *testing.T) {
		bad := cfg
		bad.Target.Path = "models/missing.onnx"
		_, err := runPass(t, c, "bad-model-"+stamp, bad)
		failsNaming(t, err, "target.path", "models/missing.onnx")
	})

	t.Run("classes not the target's", func(t *testing.T) {
		bad := cfg
		bad.Classes = append(cfg.Classes[:len(cfg.Classes):len(cfg.Classes)], "extra")
		_, err := runPass(t, c, "bad-classes-"+stamp, bad)
		failsNaming(t, err, "config: classes", fmt.Sprint(len(bad.Classes)), fmt.Sprint(len(cfg.Classes)), cfg.Target.Path)
	})

	t.Run("empty E_sample", func(t *testing.T) {
		bad := cfg
		bad.Data.ErrorSample.Prefix = "nothing-here/"
		_, err := runPass(t, c, "bad-sample-"+stamp, bad)
		failsNaming(t, err, "data.error_sample", "nothing-here/")
	})

	t.Run("bad config field", func(t *testing.T) {
		bad := cfg
		bad.Shards.Window = -1
		_, err := runPass(t, c, "bad-field-"+stamp, bad)
		failsNaming(t, err, "shards.window", "-1")
	})

	t.Run("train holds E_heldout's images", func(t *testing.T) {
		bad := cfg
		bad.Data.Train = cfg.Data.ErrorHeldout
		_, err := runPass(t, c, "bad-train-"+stamp, bad)
		failsNaming(t, err, "data.train: image", "is also in data.error_heldout")
	})

	t.Run("corrupt pool image is skipped", func(t *testing.T) {
		// A pool of the first 400 demo pool images plus one file that is
		// not an image at all.
		var sb strings.Builder
		sb.WriteString("uri,label,domain\n")
		n := 0
		err := dataset.Walk(ctx, b, cfg.Data.Pool, func(it dataset.Item) error {
			if n < 400 {
				fmt.Fprintf(&sb, "/%s,%s,%s\n", it.Key, it.Label, it.Domain)
			}
			n++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		sb.WriteString("/corrupt/broken.png,3,clean\n")
		if err := b.WriteAll(ctx, "corrupt/broken.png", []byte("\x89PNG\r\n\x1a\nthis is not a picture"), nil); err != nil {
			t.Fatal(err)
		}
		if err := b.WriteAll(ctx, "corrupt/manifest.csv", []byte(sb.String()), nil); err != nil {
			t.Fatal(err)
		}
		small := cfg
		small.Data.Pool.Manifest = "corrupt/manifest.csv"
		small.Selection.K = 2
		res, err := runPass(t, c, "corrupt-pool-"+stamp, small)
		if err != nil {
			t.Fatalf("a corrupt pool image failed the pass: %v", err)
		}
		if res.Rejects != 1 {
			t.Errorf("rejects %d, want 1", res.Rejects)
		}
		rejects, err := b.ReadAll(ctx, res.RejectsKey)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(rejects), "corrupt/broken.png") || !strings.Contains(string(rejects), "png") {
			t.Errorf("rejects.csv does not list the broken image with its reason:\n%s", rejects)
		}
	})
}
