// The analog front end of the in-situ controller (PROTOCOL.md §12.7), Mega 2560:
// its link on USART1 (TX1 D18, RX1 D19) at 1 Mbaud, and the LEARN enable line on D2 (PE4),
// high exactly while the edges may update themselves, timed by Timer1 (16 MHz / 8: 0.5 us
// per tick). Included by potbank.ino when built with POTBANK_INSITU.
#pragma once
#include "insitu.h"

const uint32_t AFE_BAUD = 1000000;
// A request unanswered for AFE_TIMEOUT_MS, or answered damaged, is sent again (every request
// is idempotent); after AFE_ATTEMPTS the run stops.
const uint16_t AFE_TIMEOUT_MS = 500;
const uint8_t AFE_ATTEMPTS = 10;
const uint8_t LEARN_PIN = 2;  // PE4
enum AfeCmd : uint8_t { AFE_INFO = 1, AFE_MEASURE, AFE_ARM, AFE_GET_TAPS, AFE_SET_TAPS, AFE_RELEASE,
                       AFE_GET_STATE, AFE_SET_STATE };
const uint8_t AFE_OUT_OF_RANGE = 3;
// A gate bench's f64 state travels AFE_STATE_EDGES edges (64 bytes) per exchange.
const uint8_t AFE_STATE_EDGES = 8;

// A request frame: cmd, seq, len, payload[len], CRC-16/CCITT-FALSE (big-endian) of the
// rest; the reply: cmd | 0x80, the request's seq, len, payload[len] (status first), CRC.
// seq numbers requests (a retry keeps it), so a late reply to an earlier request is
// never taken for the answer to a later one.
const uint8_t AFE_HEAD = 3, AFE_FRAME = AFE_HEAD + 2;
uint8_t afe_buf[AFE_FRAME + 1 + 4 * INSITU_MAX_NODES];
potbank::FrontEndInfo afe;
// The request as sent, for a retry (its largest: ARM with sources, clamps, mirrored clamps,
// or SET_STATE with the first edge and AFE_STATE_EDGES f64 gate volts).
uint8_t afe_request[AFE_FRAME + 1 + potbank::larger(4 * 3 * potbank::INSITU_MAX_PORTS, 8 * AFE_STATE_EDGES)];
uint8_t afe_seq = 0;
uint16_t afe_retries = 0;  // requests sent again (a reply lost, damaged or late)

static_assert(sizeof(afe_buf) >= AFE_FRAME + 1 + 2 * INSITU_MAX_TAP_EDGES, "GET_TAPS reply");
static_assert(sizeof(afe_buf) >= AFE_FRAME + 1 + 8 * AFE_STATE_EDGES, "GET_STATE reply");
static_assert(sizeof(afe_buf) >= sizeof(afe_request), "requests are built in afe_buf");

// One attempt: send the request held in afe_request (n payload bytes) and read frames into
// afe_buf until its reply. Returns the reply's payload length after its status, -1 when no
// valid reply came in time, -2 for a valid reply whose status is not OK.
int16_t afe_attempt(uint8_t cmd, uint8_t n) {
  while (Serial1.available()) Serial1.read();  // late replies to earlier attempts
  Serial1.write(afe_request, AFE_FRAME + n);
  uint16_t got = 0, need = AFE_FRAME;
  uint32_t start = millis();
  while (millis() - start <= AFE_TIMEOUT_MS) {
    if (!Serial1.available()) continue;
    afe_buf[got++] = (uint8_t)Serial1.read();
    if (got == AFE_HEAD) need = AFE_FRAME + afe_buf[2];
    if (need > sizeof(afe_buf)) return -1;
    if (got < need) continue;
    uint16_t len = afe_buf[2];
    uint16_t crc = potbank::crc16(afe_buf, AFE_HEAD + len);
    bool valid = afe_buf[AFE_HEAD + len] == (crc >> 8) && afe_buf[AFE_HEAD + len + 1] == (crc & 0xFF);
    if (!valid) return -1;  // out of step: ask again
    if (afe_buf[0] == (cmd | 0x80) && afe_buf[1] == afe_seq && len >= 1)
      return afe_buf[AFE_HEAD] ? -2 : len - 1;
    got = 0;  // a reply to an earlier request: read on
    need = AFE_FRAME;
  }
  return -1;
}

// Send the n payload bytes at afe_buf + AFE_HEAD as request cmd; the reply's payload
// (after its status) lands at afe_buf + AFE_HEAD + 1. Returns the payload's length, -1 (no
// valid reply in AFE_ATTEMPTS) or -2 (a status not OK, at afe_buf[AFE_HEAD]).
int16_t afe_exchange(uint8_t cmd, uint8_t n, bool wait = true) {
  afe_buf[0] = cmd;
  afe_buf[1] = ++afe_seq;
  afe_buf[2] = n;
  uint16_t crc = potbank::crc16(afe_buf, AFE_HEAD + n);
  afe_buf[AFE_HEAD + n] = crc >> 8;
  afe_buf[AFE_HEAD + n + 1] = crc & 0xFF;
  memcpy(afe_request, afe_buf, AFE_FRAME + n);
  if (!wait) {
    Serial1.write(afe_request, AFE_FRAME + n);
    return 0;
  }
  for (uint8_t k = 0; k < AFE_ATTEMPTS; k++) {
    if (k) afe_retries++;
    int16_t r = afe_attempt(cmd, n);
    if (r != -1) return r;
  }
  return -1;
}

const uint8_t Q = AFE_HEAD, P = AFE_HEAD + 1;  // a request's payload; a reply's, after its status

uint8_t put_floats(uint8_t at, const float* v, uint8_t n) {
  memcpy(afe_buf + at, v, 4 * n);
  return at + 4 * n;
}

bool fe_info(potbank::FrontEndInfo* out) {
  int16_t n = afe_exchange(AFE_INFO, 0);
  const uint8_t* p = afe_buf + P;
  if (n < 6 || p[5] > potbank::INSITU_MAX_PORTS || n != 6 + p[5]) return false;
  afe.n_nodes = p[0]; afe.n_edges = p[1]; afe.n_taps = p[2] | p[3] << 8;
  afe.n_sources = p[4]; afe.n_outputs = p[5];
  memcpy(afe.outputs, p + 6, afe.n_outputs);
  *out = afe;
  return true;
}

bool fe_measure(const float* sources, const float* clamps, float* nodes) {
  afe_buf[Q] = clamps ? 1 : 0;
  uint8_t at = put_floats(Q + 1, sources, afe.n_sources);
  if (clamps) at = put_floats(at, clamps, afe.n_outputs);
  if (afe_exchange(AFE_MEASURE, at - Q) != 4 * afe.n_nodes) return false;
  memcpy(nodes, afe_buf + P, 4 * afe.n_nodes);
  return true;
}

bool fe_arm(const float* sources, const float* clamps, const float* free_clamps) {
  afe_buf[Q] = free_clamps ? 1 : 0;
  uint8_t at = put_floats(Q + 1, sources, afe.n_sources);
  at = put_floats(at, clamps, afe.n_outputs);
  if (free_clamps) at = put_floats(at, free_clamps, afe.n_outputs);
  return afe_exchange(AFE_ARM, at - Q) == 0;
}

// LEARN high for `ticks` Timer1 ticks. OCF1A is set one timer clock after TCNT1 reaches
// OCR1A (ATmega2560 datasheet, "Timer/Counter Timing Diagrams"), so OCR1A = ticks - 1.
// Interrupts are off meanwhile, so the line falls within one tick of the match (serial
// bytes that arrive during a window longer than the USART's two-byte buffer can be lost;
// the protocol's retries cover them).
void fe_window(uint16_t ticks) {
  uint8_t sreg = SREG;
  cli();
  TCCR1B = 0;
  TCCR1A = 0;
  TCNT1 = 0;
  OCR1A = ticks - 1;
  TIFR1 = _BV(OCF1A);
  PORTE |= _BV(PE4);
  TCCR1B = _BV(CS11);  // clk / 8
  while (!(TIFR1 & _BV(OCF1A))) {}
  PORTE &= ~_BV(PE4);
  TCCR1B = 0;
  SREG = sreg;
}

bool fe_get_taps(uint16_t* taps) {
  if (afe_exchange(AFE_GET_TAPS, 0) != 2 * afe.n_edges) return false;
  for (uint8_t j = 0; j < afe.n_edges; j++) taps[j] = afe_buf[P + 2 * j] | afe_buf[P + 1 + 2 * j] << 8;
  return true;
}

bool fe_set_taps(const uint16_t* taps) {
  for (uint8_t j = 0; j < afe.n_edges; j++) { afe_buf[Q + 2 * j] = taps[j] & 0xFF; afe_buf[Q + 1 + 2 * j] = taps[j] >> 8; }
  return afe_exchange(AFE_SET_TAPS, 2 * afe.n_edges) == 0;
}

// A gate bench's state: f64 gate volts, relayed as raw bytes AFE_STATE_EDGES edges at a time.
bool fe_get_state(uint8_t* f64s) {
  for (uint8_t first = 0; first < afe.n_edges; first += AFE_STATE_EDGES) {
    uint8_t count = afe.n_edges - first < AFE_STATE_EDGES ? afe.n_edges - first : AFE_STATE_EDGES;
    afe_buf[Q] = first;
    afe_buf[Q + 1] = count;
    if (afe_exchange(AFE_GET_STATE, 2) != 8 * count) return false;
    memcpy(f64s + 8 * first, afe_buf + P, 8 * count);
  }
  return true;
}

uint8_t fe_set_state(const uint8_t* f64s) {
  for (uint8_t first = 0; first < afe.n_edges; first += AFE_STATE_EDGES) {
    uint8_t count = afe.n_edges - first < AFE_STATE_EDGES ? afe.n_edges - first : AFE_STATE_EDGES;
    afe_buf[Q] = first;
    memcpy(afe_buf + Q + 1, f64s + 8 * first, 8 * count);
    int16_t r = afe_exchange(AFE_SET_STATE, 1 + 8 * count);
    if (r == -2 && afe_buf[AFE_HEAD] == AFE_OUT_OF_RANGE) return potbank::ST_OUT_OF_RANGE;
    if (r != 0) return potbank::ST_HARDWARE_FAULT;
  }
  return potbank::ST_OK;
}

void fe_release() {
  PORTE &= ~_BV(PE4);
  afe_exchange(AFE_RELEASE, 0, false);  // its reply is flushed by the next request
}

potbank::FrontEnd front_end() {
  return {fe_info, fe_measure, fe_arm, fe_window, fe_get_taps, fe_set_taps, fe_release, fe_get_state,
          fe_set_state};
}

void front_end_begin() {
  digitalWrite(LEARN_PIN, LOW);
  pinMode(LEARN_PIN, OUTPUT);
  Serial1.begin(AFE_BAUD);
}
