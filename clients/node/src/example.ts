// Calls searchsvc the way a backend service does: creates a collection, streams documents through BulkIndex
// and checks every ack, searches with a deadline and prints each hit's explanation, searches with a range
// filter on typed metadata, shows the status of a bad request, streams an extractive answer, sends a PDF as it is
// and finds it by page, and deletes the collection.
//
// Usage: node dist/example.js [address=127.0.0.1:50051] [collection=node-example] [pdf=examples/quickstart/science-notes.pdf]
import { readFileSync } from "fs";
import { basename } from "path";

import { credentials, Metadata, ServiceError, status } from "@grpc/grpc-js";

import {
  AnswerRequest,
  answerKindToJSON,
  BulkIndexRequest,
  BulkIndexResponse,
  CreateCollectionRequest,
  DeleteCollectionRequest,
  Document,
  SearchRequest,
  SearchResponse,
  SearchServiceClient,
} from "./gen/searchsvc/v1/searchsvc";

const [address = "127.0.0.1:50051", collection = "node-example", pdf = "examples/quickstart/science-notes.pdf"] =
  process.argv.slice(2);
const client = new SearchServiceClient(address, credentials.createInsecure());

// fromPartial fills every field left out (metadata, vector, and any the proto adds later) with its default.
// Typed metadata: the year as an integer and New Year's Day as a timestamp (a Date in ts-proto's mapping).
const newYear = (year: number) => ({ timestampValue: new Date(Date.UTC(year, 0, 1)) });
const published = (year: number) => ({ year: { intValue: year }, published: newYear(year) });
const documents: Document[] = [
  { id: "vaccine", title: "Vaccines", text: "Vaccines train the immune system to recognise a pathogen before infection.", typedMetadata: published(1998) },
  { id: "coffee", title: "Coffee", text: "Coffee beans are roasted seeds; caffeine is a stimulant.", typedMetadata: published(2004) },
  { id: "volcano", title: "Volcanoes", text: "A volcano erupts when magma rises through the crust.", typedMetadata: published(2015) },
  { id: "empty", title: "Rejected", text: "   " }, // rejected by the server: the ack names the field
  { id: "tides", title: "Tides", text: "Tides are caused by the gravitational pull of the moon.", typedMetadata: published(2020) },
  { id: "antibody", title: "Antibodies", text: "Antibodies bind antigens and mark pathogens for the immune system.", typedMetadata: published(2012) },
].map((d) => Document.fromPartial(d));
const BATCH_SIZE = 2;
const WINDOW = 2; // batches in flight before waiting for an ack

function deadline(seconds: number): Date {
  return new Date(Date.now() + seconds * 1000);
}

// The generated client is callback-style (grpc-js); one small adapter makes each unary call awaitable.
function unary<Req, Res>(
  method: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown,
  request: Req,
  seconds = 60,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    method.call(client, request, new Metadata(), { deadline: deadline(seconds) }, (err, res) => (err ? reject(err) : resolve(res))),
  );
}

async function bulkIndex(): Promise<void> {
  const stream = client.bulkIndex({ deadline: deadline(120) });
  const acks: BulkIndexResponse[] = [];
  let waiting: (() => void) | null = null;
  let failed: Error | null = null;
  stream.on("data", (ack: BulkIndexResponse) => {
    acks.push(ack);
    waiting?.();
  });
  stream.on("error", (err: Error) => {
    failed = err;
    waiting?.();
  });
  const ended = new Promise<void>((resolve) => stream.on("end", resolve));
  const nextAck = async (): Promise<void> => {
    const have = acks.length;
    while (acks.length === have && !failed) await new Promise<void>((resolve) => (waiting = resolve));
    if (failed) throw failed;
    const ack = acks[acks.length - 1];
    if (ack.sequence !== acks.length) throw new Error(`ack for batch ${ack.sequence}, expected ${acks.length}`);
    const errors = ack.errors.map((e) => ` (${e.field}: code ${e.code})`).join("");
    console.log(`ack ${ack.sequence}: indexed ${ack.indexedCount}, failed ${ack.failedCount}${errors}`);
  };
  let sent = 0;
  let seen = 0;
  for (let i = 0; i < documents.length; i += BATCH_SIZE) {
    sent += 1;
    stream.write(BulkIndexRequest.fromPartial({ collection, documents: documents.slice(i, i + BATCH_SIZE), sequence: sent }));
    if (sent - seen >= WINDOW) {
      await nextAck();
      seen += 1;
    }
  }
  stream.end();
  while (seen < sent) {
    await nextAck();
    seen += 1;
  }
  await ended;
  const indexed = acks.reduce((n, a) => n + a.indexedCount, 0);
  console.log(`indexed ${indexed} documents in ${acks.length} acks`);
}

async function search(): Promise<void> {
  const request = SearchRequest.fromPartial({
    collection,
    query: "how does the immune system recognise pathogens",
    topK: 3,
    explain: true,
  });
  const response: SearchResponse = await unary(client.search, request, 5); // a 5 s deadline
  response.hits.forEach((hit, i) => {
    const e = hit.explanation;
    const dense = e?.dense ? ` dense=#${e.dense.rank}/${e.dense.score.toFixed(3)}` : "";
    const keyword = e?.keyword ? ` keyword=#${e.keyword.rank}/${e.keyword.score.toFixed(3)}` : "";
    console.log(`hit ${i + 1}: ${hit.documentId} score=${hit.score.toFixed(4)}${dense}${keyword}`);
  });
  console.log(`search took ${response.timings?.totalMs.toFixed(1)} ms on the server (query language ${response.queryLanguage})`);
}

// Documents published from 2010 on (a range on a timestamp), applied inside both legs.
async function filteredSearch(): Promise<void> {
  const request = SearchRequest.fromPartial({
    collection,
    query: "immune system",
    topK: 5,
    where: { must: [{ key: "published", range: { gte: newYear(2010) } }] },
  });
  const response: SearchResponse = await unary(client.search, request, 5);
  const found = response.hits.map((h) => `${h.documentId} ${h.typedMetadata["year"]?.intValue}`).sort();
  console.log(`range filter: ${found.join(", ")}`);
}

async function badRequest(): Promise<void> {
  for (const [label, request] of [
    ["bad request", SearchRequest.fromPartial({ collection, query: "  " })],
    ["missing collection", SearchRequest.fromPartial({ collection: "no-such-collection", query: "x" })],
  ] as const) {
    try {
      await unary(client.search, request);
      throw new Error(`${label}: expected an error`);
    } catch (err) {
      const e = err as ServiceError;
      if (e.code === undefined) throw err;
      console.log(`${label}: code ${e.code} (${status[e.code]}): ${e.details}`);
    }
  }
}

async function streamAnswer(): Promise<void> {
  const request = AnswerRequest.fromPartial({
    search: { collection, query: "What do antibodies do?", topK: 3 },
    extractive: true, // no LLM needed
  });
  let deltas = 0;
  for await (const event of client.streamAnswer(request, { deadline: deadline(60) })) {
    if (event.context) console.log(`answer context: ${event.context.hits.length} hits`);
    if (event.delta) deltas += 1;
    if (event.done) {
      console.log(`answer (${answerKindToJSON(event.done.kind)}, ${deltas} deltas): ${event.done.answer}`);
      for (const c of event.done.citations) console.log(`cited ${c.marker} ${c.documentId}`);
    }
  }
}

// A PDF as it is: the server reads it page by page, and acks once it is searchable (refresh).
async function indexPdf(): Promise<void> {
  const notes = Document.fromPartial({ id: "notes", content: readFileSync(pdf), contentType: "application/pdf", filename: basename(pdf) });
  const stream = client.bulkIndex({ deadline: deadline(120) });
  const ack = await new Promise<BulkIndexResponse>((resolve, reject) => {
    stream.on("data", resolve);
    stream.on("error", reject);
    stream.write(BulkIndexRequest.fromPartial({ collection, documents: [notes], refresh: true }));
  });
  stream.end();
  console.log(`pdf: indexed ${ack.indexedCount}, failed ${ack.failedCount}`);
  const request = SearchRequest.fromPartial({ collection, query: "what makes the tides rise and fall", topK: 1,
    filter: { source: notes.filename } });
  const hit = (await unary(client.search, request)).hits[0];
  console.log(`pdf hit: ${hit.documentId} ${hit.typedMetadata.source?.stringValue} p.${hit.typedMetadata.page?.intValue}`);
}

async function main(): Promise<void> {
  const created = await unary(
    client.createCollection,
    CreateCollectionRequest.fromPartial({ name: collection, config: { language: "en", refreshIntervalMs: -1 } }),
  );
  console.log(`created collection ${created.name} (language ${created.config?.language}, analyzer ${created.config?.analyzer})`);
  await bulkIndex();
  await search();
  await filteredSearch();
  await badRequest();
  await streamAnswer();
  await indexPdf();
  await unary(client.deleteCollection, DeleteCollectionRequest.fromPartial({ name: collection }));
  console.log(`deleted collection ${collection}`);
  client.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
