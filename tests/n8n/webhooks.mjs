// Posts bookings and leads to the example workflows' webhooks in a running n8n (started by
// tests/n8n/run.sh) and checks what the voice agent receives and what the emulated HubSpot holds.
// N8N_URL, HUBSPOT_URL and API_PID (the functions' process, stopped for the last case) come from run.sh.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const n8n = process.env.N8N_URL;
const hubspot = process.env.HUBSPOT_URL;
const sample = (name) => JSON.parse(readFileSync(new URL(`../../examples/n8n/${name}`, import.meta.url)));
const booking = sample('sample-booking.json');
const lead = sample('sample-lead.json');

async function post(path, body) {
  const response = await fetch(`${n8n}/webhook/${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    assert.fail(`${path} answered ${response.status} with a body that is not JSON: ${text}`);
  }
  return { status: response.status, body: json };
}

async function hubspotObject(type, id, properties) {
  const response = await fetch(`${hubspot}/crm/v3/objects/${type}/${id}?properties=${properties.join(',')}`, {
    headers: { authorization: 'Bearer demo-hubspot-token' },
  });
  assert.equal(response.status, 200, `HubSpot ${type} ${id}`);
  return (await response.json()).properties;
}

async function crmRequestCount() {
  return (await (await fetch(`${hubspot}/__emulator/requests/count`)).json()).count;
}

// n8n registers published webhooks shortly after its port opens; until then they answer 404. An
// empty lead is refused by crm-sync (400) once the workflow runs.
async function waitForWebhooks() {
  for (let attempt = 0; attempt < 120; attempt++) {
    const status = await fetch(`${n8n}/webhook/voice-lead`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })
      .then((r) => r.status, () => 0);
    if (status && status !== 404) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  assert.fail('the workflows\' webhooks were not registered within 60 s');
}

const cases = [];
const test = (name, run) => cases.push({ name, run });

test('a complete booking creates the contact and the meeting at the right instant', async () => {
  const { status, body } = await post('voice-booking', booking);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.success, true);
  assert.equal(body.status, 'created');
  assert.equal(body.appointment.status, 'created');
  const meeting = await hubspotObject('meetings', body.appointment.crmId, ['hs_meeting_start_time', 'hs_meeting_title']);
  // 10:00 in Chicago in July (CDT, UTC-5).
  assert.equal(meeting.hs_meeting_start_time, '2025-07-01T15:00:00.000Z');
  assert.equal(meeting.hs_meeting_title, 'Boiler service');
  const contact = await hubspotObject('contacts', body.contact.crmId, ['email', 'city']);
  assert.equal(contact.email, 'maria.garcia@example.com');
  assert.equal(contact.city, 'Chicago');
});

test('the same booking again answers unchanged and calls no CRM', async () => {
  const before = await crmRequestCount();
  const { status, body } = await post('voice-booking', booking);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.status, 'unchanged');
  assert.equal(await crmRequestCount(), before);
});

test('a minimal booking (no email, address, notes, duration or zone) is synced', async () => {
  const minimal = { bookingId: 'vb-minimal-1', callerFirstName: 'Ana', callerPhone: '312-555-0199', startTime: '2025-07-02T09:30:00-05:00' };
  const { status, body } = await post('voice-booking', minimal);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.status, 'created');
  const contact = await hubspotObject('contacts', body.contact.crmId, ['phone', 'email', 'firstname']);
  assert.equal(contact.firstname, 'Ana');
  assert.ok(!contact.email, `no email was given, HubSpot holds ${contact.email}`);
  const meeting = await hubspotObject('meetings', body.appointment.crmId, ['hs_meeting_start_time', 'hs_meeting_end_time']);
  assert.equal(meeting.hs_meeting_start_time, '2025-07-02T14:30:00.000Z');
  // The connection's default duration.
  assert.equal(meeting.hs_meeting_end_time, '2025-07-02T15:00:00.000Z');
});

test('a booking whose optional fields are null is synced', async () => {
  const nulls = { bookingId: 'vb-nulls-1', callerFirstName: 'Bo', callerLastName: null, callerEmail: null, callerPhone: '312-555-0123',
    startTime: '2025-07-03T11:00:00', timezone: null, durationMinutes: null, address: null, notes: null, status: null };
  const { status, body } = await post('voice-booking', nulls);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.status, 'created');
  // A wall time in the connection's zone (America/New_York, EDT in July).
  const meeting = await hubspotObject('meetings', body.appointment.crmId, ['hs_meeting_start_time']);
  assert.equal(meeting.hs_meeting_start_time, '2025-07-03T15:00:00.000Z');
});

test('a booking with a malformed phone answers 400 naming the field, and reaches no CRM', async () => {
  const before = await crmRequestCount();
  const { status, body } = await post('voice-booking', { ...booking, bookingId: 'vb-bad-phone', callerEmail: undefined, callerPhone: 'call me maybe' });
  assert.equal(status, 400, JSON.stringify(body));
  assert.equal(body.success, false);
  assert.equal(body.error.code, 'validation_failed');
  assert.equal(body.error.field, 'customer.phone');
  assert.equal(await crmRequestCount(), before);
});

test('a booking without a start answers 400 naming the field, at once (no retries)', async () => {
  const started = Date.now();
  const { status, body } = await post('voice-booking', { ...booking, bookingId: 'vb-no-start', startTime: undefined });
  assert.equal(status, 400, JSON.stringify(body));
  assert.equal(body.error.code, 'validation_failed');
  assert.equal(body.error.field, 'appointment.start');
  assert.ok(Date.now() - started < 3000, `answered after ${Date.now() - started} ms`);
});

test('a cancelled booking cancels the same meeting', async () => {
  const { body: first } = await post('voice-booking', booking);
  const { status, body } = await post('voice-booking', { ...booking, status: 'cancelled' });
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.appointment.status, 'cancelled');
  assert.equal(body.appointment.crmId, first.appointment.crmId);
  const meeting = await hubspotObject('meetings', body.appointment.crmId, ['hs_meeting_outcome']);
  assert.equal(meeting.hs_meeting_outcome, 'CANCELED');
});

test('a complete lead creates the lead for its contact', async () => {
  const { status, body } = await post('voice-lead', lead);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.status, 'created');
  const contact = await hubspotObject('contacts', body.contact.crmId, ['email']);
  assert.equal(contact.email, 'sam.lee@example.com');
  await hubspotObject('leads', body.crmId, ['hs_lead_name']);
  const again = await post('voice-lead', lead);
  assert.equal(again.body.status, 'unchanged');
});

test('a minimal lead (a first name and a phone) is synced', async () => {
  // HubSpot refuses a contact with neither email nor a name (422 crm_rejected, passed on as is).
  const { status, body } = await post('voice-lead', { callerFirstName: 'Lou', callerPhone: '+1 415 555 0177' });
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.status, 'created');
});

test('a lead with neither email nor phone answers 400', async () => {
  const { status, body } = await post('voice-lead', { callerFirstName: 'Nobody', notes: 'hung up' });
  assert.equal(status, 400, JSON.stringify(body));
  assert.equal(body.error.code, 'validation_failed');
  assert.match(body.error.field, /^lead\./);
});

test('crm-sync unreachable answers 502 with an error body', async () => {
  process.kill(Number(process.env.API_PID));
  await new Promise((resolve) => setTimeout(resolve, 300));
  const { status, body } = await post('voice-booking', booking);
  assert.equal(status, 502, JSON.stringify(body));
  assert.equal(body.success, false);
  assert.equal(body.error.code, 'crm_sync_unreachable');
});

await waitForWebhooks();
let failed = 0;
for (const { name, run } of cases) {
  try {
    await run();
    console.log(`ok   n8n: ${name}`);
  } catch (error) {
    failed++;
    console.log(`FAIL n8n: ${name}\n     ${error.message.replaceAll('\n', '\n     ')}`);
  }
}
console.log(`n8n workflows: ${cases.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
