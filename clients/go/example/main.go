// Command example calls searchsvc the way a backend service does: it creates a collection, streams documents
// through BulkIndex and checks every ack, searches with a deadline and prints each hit's explanation, searches
// with a range filter on typed metadata, reads a document back by id, shows the status of a bad request, streams an
// extractive answer, sends a PDF as it is and finds it by page, and deletes the collection.
//
// Usage: example -addr 127.0.0.1:50051 -collection go-example
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/searchsvc/searchsvc/clients/go/searchsvc/v1"
)

var documents = []*pb.Document{
	{Id: "vaccine", Title: "Vaccines", Text: "Vaccines train the immune system to recognise a pathogen before infection.", TypedMetadata: published(1998)},
	{Id: "coffee", Title: "Coffee", Text: "Coffee beans are roasted seeds; caffeine is a stimulant.", TypedMetadata: published(2004)},
	{Id: "volcano", Title: "Volcanoes", Text: "A volcano erupts when magma rises through the crust.", TypedMetadata: published(2015)},
	{Id: "empty", Title: "Rejected", Text: "   "}, // rejected by the server: the ack names the field
	{Id: "tides", Title: "Tides", Text: "Tides are caused by the gravitational pull of the moon.", TypedMetadata: published(2020)},
	{Id: "antibody", Title: "Antibodies", Text: "Antibodies bind antigens and mark pathogens for the immune system.", TypedMetadata: published(2012)},
}

func newYear(year int) *pb.MetadataValue {
	t := time.Date(year, 1, 1, 0, 0, 0, 0, time.UTC)
	return &pb.MetadataValue{Kind: &pb.MetadataValue_TimestampValue{TimestampValue: timestamppb.New(t)}}
}

// published is a document's typed metadata: the year as an integer and New Year's Day as a timestamp.
func published(year int) map[string]*pb.MetadataValue {
	return map[string]*pb.MetadataValue{
		"year":      {Kind: &pb.MetadataValue_IntValue{IntValue: int64(year)}},
		"published": newYear(year),
	}
}

const batchSize = 2
const window = 2 // batches in flight before waiting for an ack

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address")
	name := flag.String("collection", "go-example", "collection to create (deleted at the end)")
	pdf := flag.String("pdf", "examples/quickstart/science-notes.pdf", "a PDF to send as it is and find by page")
	flag.Parse()

	dialCtx, cancelDial := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelDial()
	// Debian's grpc-go is 1.33: WithInsecure (credentials/insecure arrived later).
	conn, err := grpc.DialContext(dialCtx, *addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		log.Fatalf("dial %s: %v", *addr, err)
	}
	defer conn.Close()
	client := pb.NewSearchServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	created, err := client.CreateCollection(ctx, &pb.CreateCollectionRequest{
		Name:   *name,
		Config: &pb.CollectionConfig{Language: "en", RefreshIntervalMs: -1},
	})
	if err != nil {
		log.Fatalf("CreateCollection: %v", err)
	}
	fmt.Printf("created collection %s (language %s, analyzer %s)\n", created.Name, created.Config.Language, created.Config.Analyzer)

	bulkIndex(ctx, client, *name)
	search(ctx, client, *name)
	filteredSearch(ctx, client, *name)
	readBack(ctx, client, *name)
	badRequest(ctx, client, *name)
	streamAnswer(ctx, client, *name)
	indexPDF(ctx, client, *name, *pdf)

	if _, err := client.DeleteCollection(ctx, &pb.DeleteCollectionRequest{Name: *name}); err != nil {
		log.Fatalf("DeleteCollection: %v", err)
	}
	fmt.Printf("deleted collection %s\n", *name)
}

// indexPDF sends a PDF as it is (the server reads it page by page; the ack comes once it is searchable) and finds
// a passage by its page.
func indexPDF(ctx context.Context, client pb.SearchServiceClient, name, path string) {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		log.Fatalf("read %s: %v", path, err)
	}
	doc := &pb.Document{Id: "notes", Content: data, ContentType: "application/pdf", Filename: filepath.Base(path)}
	stream, err := client.BulkIndex(ctx)
	if err != nil {
		log.Fatalf("BulkIndex: %v", err)
	}
	if err := stream.Send(&pb.BulkIndexRequest{Collection: name, Documents: []*pb.Document{doc}, Refresh: true}); err != nil {
		log.Fatalf("send: %v", err)
	}
	ack, err := stream.Recv()
	if err != nil {
		log.Fatalf("ack: %v", err)
	}
	stream.CloseSend()
	fmt.Printf("pdf: indexed %d, failed %d\n", ack.IndexedCount, ack.FailedCount)
	resp, err := client.Search(ctx, &pb.SearchRequest{Collection: name, Query: "what makes the tides rise and fall", TopK: 1,
		Filter: map[string]string{"source": doc.Filename}})
	if err != nil || len(resp.Hits) == 0 {
		log.Fatalf("search the PDF: %v", err)
	}
	hit := resp.Hits[0]
	fmt.Printf("pdf hit: %s %s p.%d\n", hit.DocumentId, hit.TypedMetadata["source"].GetStringValue(), hit.TypedMetadata["page"].GetIntValue())
}

// bulkIndex streams the documents in numbered batches, keeping at most `window` unacknowledged, and checks that
// acks come back in order. A batch is durable once acked; unacked batches are the ones to resend on failure.
func bulkIndex(ctx context.Context, client pb.SearchServiceClient, collection string) {
	stream, err := client.BulkIndex(ctx)
	if err != nil {
		log.Fatalf("BulkIndex: %v", err)
	}
	var sent, acked int64
	indexed := int32(0)
	recv := func() {
		ack, err := stream.Recv()
		if err != nil {
			log.Fatalf("BulkIndex ack: %v", err)
		}
		acked++
		if ack.Sequence != acked {
			log.Fatalf("ack for batch %d, expected %d", ack.Sequence, acked)
		}
		indexed += ack.IndexedCount
		fmt.Printf("ack %d: indexed %d, failed %d", ack.Sequence, ack.IndexedCount, ack.FailedCount)
		for _, e := range ack.Errors {
			fmt.Printf(" (%s: code %d)", e.Field, e.Code)
		}
		fmt.Println()
	}
	for i := 0; i < len(documents); i += batchSize {
		end := i + batchSize
		if end > len(documents) {
			end = len(documents)
		}
		sent++
		if err := stream.Send(&pb.BulkIndexRequest{Collection: collection, Documents: documents[i:end], Sequence: sent}); err != nil {
			log.Fatalf("BulkIndex send: %v", err)
		}
		if sent-acked >= window {
			recv()
		}
	}
	if err := stream.CloseSend(); err != nil {
		log.Fatalf("BulkIndex close: %v", err)
	}
	for acked < sent {
		recv()
	}
	if _, err := stream.Recv(); err != io.EOF {
		log.Fatalf("BulkIndex: expected the end of the stream, got %v", err)
	}
	fmt.Printf("indexed %d documents in %d acks\n", indexed, acked)
}

// search asks with a 5 s deadline, as a unary call from a request path would, and prints the explanation.
func search(ctx context.Context, client pb.SearchServiceClient, collection string) {
	deadline, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := client.Search(deadline, &pb.SearchRequest{
		Collection: collection, Query: "how does the immune system recognise pathogens", TopK: 3, Explain: true,
	})
	if err != nil {
		log.Fatalf("Search: %v", err)
	}
	for i, h := range resp.Hits {
		e := h.Explanation
		fmt.Printf("hit %d: %s score=%.4f", i+1, h.DocumentId, h.Score)
		if e.Dense != nil {
			fmt.Printf(" dense=#%d/%.3f", e.Dense.Rank, e.Dense.Score)
		}
		if e.Keyword != nil {
			fmt.Printf(" keyword=#%d/%.3f", e.Keyword.Rank, e.Keyword.Score)
		}
		fmt.Println()
	}
	fmt.Printf("search took %.1f ms on the server (query language %s)\n", resp.Timings.TotalMs, resp.QueryLanguage)
}

// filteredSearch keeps documents published from 2010 on (a range on a timestamp), inside both legs.
func filteredSearch(ctx context.Context, client pb.SearchServiceClient, collection string) {
	since := &pb.FilterClause{Key: "published", Condition: &pb.FilterClause_Range{Range: &pb.Range{Gte: newYear(2010)}}}
	resp, err := client.Search(ctx, &pb.SearchRequest{
		Collection: collection, Query: "immune system", TopK: 5, Where: &pb.Filter{Must: []*pb.FilterClause{since}},
	})
	if err != nil {
		log.Fatalf("Search: %v", err)
	}
	found := map[string]int64{}
	for _, h := range resp.Hits {
		found[h.DocumentId] = h.TypedMetadata["year"].GetIntValue()
	}
	ids := make([]string, 0, len(found))
	for id := range found {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%s %d", id, found[id])
	}
	fmt.Printf("range filter: %s\n", strings.Join(parts, ", "))
}

// readBack reads a document back by id (its text, typed metadata and chunks) and counts documents by a filter.
func readBack(ctx context.Context, client pb.SearchServiceClient, collection string) {
	got, err := client.GetDocuments(ctx, &pb.GetDocumentsRequest{Collection: collection, Ids: []string{"tides", "nope"}})
	if err != nil {
		log.Fatalf("GetDocuments: %v", err)
	}
	d := got.Documents[0]
	year := d.TypedMetadata["published"].GetTimestampValue().AsTime().Year()
	fmt.Printf("document %s: %q (%d), %d chunk(s); not found: %s\n", d.Id, d.Text, year, len(d.Chunks), strings.Join(got.NotFoundIds, ","))
	since := &pb.Filter{Must: []*pb.FilterClause{{Key: "published", Condition: &pb.FilterClause_Range{Range: &pb.Range{
		Gte: &pb.MetadataValue{Kind: &pb.MetadataValue_TimestampValue{TimestampValue: timestamppb.New(time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC))}},
	}}}}}
	counted, err := client.CountDocuments(ctx, &pb.CountDocumentsRequest{Collection: collection, Where: since})
	if err != nil {
		log.Fatalf("CountDocuments: %v", err)
	}
	fmt.Printf("documents published since 2010: %d\n", counted.Count)
}

// badRequest shows what a caller gets for an invalid request: INVALID_ARGUMENT naming the field.
func badRequest(ctx context.Context, client pb.SearchServiceClient, collection string) {
	_, err := client.Search(ctx, &pb.SearchRequest{Collection: collection, Query: "  "})
	st, _ := status.FromError(err)
	fmt.Printf("bad request: code %d (%s): %s\n", st.Code(), st.Code(), st.Message())
	_, err = client.Search(ctx, &pb.SearchRequest{Collection: "no-such-collection", Query: "x"})
	st, _ = status.FromError(err)
	fmt.Printf("missing collection: code %d (%s)\n", st.Code(), st.Code())
}

// streamAnswer streams an extractive answer (no LLM needed): context first, text deltas, then the final response.
func streamAnswer(ctx context.Context, client pb.SearchServiceClient, collection string) {
	stream, err := client.StreamAnswer(ctx, &pb.AnswerRequest{
		Search:     &pb.SearchRequest{Collection: collection, Query: "What do antibodies do?", TopK: 3},
		Extractive: true,
	})
	if err != nil {
		log.Fatalf("StreamAnswer: %v", err)
	}
	deltas := 0
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatalf("StreamAnswer: %v", err)
		}
		switch e := event.Event.(type) {
		case *pb.AnswerEvent_Context:
			fmt.Printf("answer context: %d hits\n", len(e.Context.Hits))
		case *pb.AnswerEvent_Delta:
			deltas++
		case *pb.AnswerEvent_Done:
			fmt.Printf("answer (%s, %d deltas): %s\n", e.Done.Kind, deltas, e.Done.Answer)
			for _, c := range e.Done.Citations {
				fmt.Printf("cited %s %s\n", c.Marker, c.DocumentId)
			}
		}
	}
}
