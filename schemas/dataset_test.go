package schemas

import (
	"errors"
	"strings"
	"testing"
)

// A dataset is exactly one of a prefix, a manifest and a webdataset.
func TestDatasetIsExactlyOneSource(t *testing.T) {
	base := minimalConfig()
	for _, tc := range []struct {
		pool Dataset
		ok   bool
	}{
		{Dataset{WebDataset: "pool/"}, true},
		{Dataset{WebDataset: "s3://bucket/pool/00000.tar?region=us-east-1"}, true},
		{Dataset{}, false},
		{Dataset{Prefix: "p/", WebDataset: "pool/"}, false},
		{Dataset{Manifest: "p.csv", WebDataset: "pool/"}, false},
	} {
		c := base
		c.Data.Pool = tc.pool
		err := c.Validate()
		var fe *FieldError
		switch {
		case tc.ok && err != nil:
			t.Errorf("%+v: %v", tc.pool, err)
		case !tc.ok && (!errors.As(err, &fe) || fe.Field != "data.pool" || !strings.Contains(err.Error(), "prefix, manifest and webdataset")):
			t.Errorf("%+v: %v, want an error naming data.pool and the three choices", tc.pool, err)
		}
	}
}
