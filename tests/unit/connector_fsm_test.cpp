// The connector state machine, every status x event pair, against a table written out by hand
// from OCPP 1.6's allowed transitions (not generated from the implementation's table).
#include <gtest/gtest.h>

#include <map>

#include "connector_fsm.hpp"

using namespace pilecore;
using namespace pilecore::core;
using S = ConnectorStatus;
using E = ConnectorEvent;

namespace {

// Columns in ConnectorEvent order.
const E events[] = {E::plugged,   E::unplugged,       E::ev_ready,     E::ev_paused,   E::ev_full,  E::fault,
                    E::fault_cleared, E::authorized_start, E::user_stop, E::remote_stop, E::funds_exhausted,
                    E::evse_suspend, E::evse_resume,  E::reserve,      E::reservation_ended, E::set_unavailable, E::set_available};
static_assert(std::size(events) == connector_event_count);

const std::map<std::string, S> abbrev = {{"Av", S::available},   {"Pr", S::preparing},     {"Ch", S::charging},
                                         {"SEV", S::suspended_ev}, {"SEVSE", S::suspended_evse}, {"Fi", S::finishing},
                                         {"Re", S::reserved},    {"Un", S::unavailable},   {"Fa", S::faulted}};

struct Row {
  S status;
  std::vector<E> setup;  // how the status is reached from a fresh, unplugged Available
  std::vector<std::string> expected;  // per event: next status, or "-" for refused
};

const std::vector<Row> table = {
    // plugged unplugged ev_ready ev_paused ev_full fault fault_clr auth_start user_stop remote_stop funds evse_susp evse_res reserve res_end set_unav set_av
    {S::available, {}, {"Pr", "-", "-", "-", "-", "Fa", "-", "Pr", "-", "-", "-", "-", "-", "Re", "-", "Un", "-"}},
    {S::preparing, {E::plugged}, {"Pr", "Av", "Pr", "Pr", "-", "Fa", "-", "Ch", "Fi", "Fi", "Fi", "-", "-", "-", "-", "Un", "-"}},
    {S::charging, {E::plugged, E::authorized_start}, {"-", "Av", "Ch", "SEV", "Fi", "Fa", "-", "-", "Fi", "Fi", "Fi", "SEVSE", "-", "-", "-", "Un", "-"}},
    {S::suspended_ev, {E::plugged, E::authorized_start, E::ev_paused},
     {"-", "Av", "Ch", "SEV", "Fi", "Fa", "-", "-", "Fi", "Fi", "Fi", "SEVSE", "-", "-", "-", "Un", "-"}},
    {S::suspended_evse, {E::plugged, E::authorized_start, E::evse_suspend},
     {"-", "Av", "SEVSE", "SEVSE", "Fi", "Fa", "-", "-", "Fi", "Fi", "Fi", "SEVSE", "Ch", "-", "-", "Un", "-"}},
    {S::finishing, {E::plugged, E::authorized_start, E::user_stop},
     {"-", "Av", "Fi", "Fi", "Fi", "Fa", "-", "Pr", "-", "-", "-", "-", "-", "-", "-", "Un", "-"}},
    {S::reserved, {E::reserve}, {"Pr", "-", "-", "-", "-", "Fa", "-", "-", "-", "-", "-", "-", "-", "-", "Av", "Un", "-"}},
    {S::unavailable, {E::set_unavailable}, {"Un", "Un", "-", "-", "-", "Fa", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "Av"}},
    {S::faulted, {E::plugged, E::authorized_start, E::fault},
     {"Fa", "Fa", "-", "-", "-", "-", "Fi", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"}},
};

ConnectorFsm reach(const Row& row) {
  ConnectorFsm fsm;
  for (E e : row.setup) EXPECT_TRUE(fsm.apply(e).allowed) << to_string(e);
  EXPECT_EQ(fsm.status(), row.status);
  return fsm;
}

}  // namespace

TEST(ConnectorFsm, EveryStatusTimesEveryEvent) {
  ASSERT_EQ(table.size(), static_cast<std::size_t>(connector_status_count));
  int checked = 0;
  for (const auto& row : table) {
    ASSERT_EQ(row.expected.size(), std::size(events));
    for (std::size_t i = 0; i < std::size(events); ++i) {
      ConnectorFsm fsm = reach(row);
      const Transition t = fsm.apply(events[i]);
      const std::string where = std::string(to_string(row.status)) + " + " + std::string(to_string(events[i]));
      if (row.expected[i] == "-") {
        EXPECT_FALSE(t.allowed) << where << " should be refused";
        EXPECT_EQ(fsm.status(), row.status) << where << ": a refused event changes nothing";
        EXPECT_EQ(t.refusal, "'" + std::string(to_string(events[i])) + "' is not allowed in " + std::string(to_string(row.status)));
      } else {
        EXPECT_TRUE(t.allowed) << where << ": " << t.refusal;
        EXPECT_EQ(fsm.status(), abbrev.at(row.expected[i])) << where;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, connector_status_count * connector_event_count);
}

TEST(ConnectorFsm, FaultClearedReturnsToWhereItCanSafely) {
  ConnectorFsm unplugged_fault;
  unplugged_fault.apply(E::plugged);
  unplugged_fault.apply(E::authorized_start);
  unplugged_fault.apply(E::fault);
  unplugged_fault.apply(E::unplugged);  // the driver left while the pile was faulted
  EXPECT_EQ(unplugged_fault.apply(E::fault_cleared).to, S::available);

  ConnectorFsm preparing_fault;
  preparing_fault.apply(E::plugged);
  preparing_fault.apply(E::fault);
  EXPECT_EQ(preparing_fault.before_fault(), S::preparing);
  EXPECT_EQ(preparing_fault.apply(E::fault_cleared).to, S::preparing);

  ConnectorFsm unavailable_fault;
  unavailable_fault.apply(E::set_unavailable);
  unavailable_fault.apply(E::fault);
  EXPECT_EQ(unavailable_fault.apply(E::fault_cleared).to, S::unavailable);

  ConnectorFsm reserved_fault;
  reserved_fault.apply(E::reserve);
  reserved_fault.apply(E::fault);
  EXPECT_EQ(reserved_fault.apply(E::fault_cleared).to, S::reserved);
}

TEST(ConnectorFsm, AuthorisationBeforeThePlugWaitsInPreparing) {
  ConnectorFsm fsm;
  EXPECT_EQ(fsm.apply(E::authorized_start).to, S::preparing);
  EXPECT_FALSE(fsm.plugged());
  EXPECT_FALSE(fsm.apply(E::authorized_start).allowed) << "no charging without a vehicle";
  fsm.apply(E::plugged);
  EXPECT_EQ(fsm.apply(E::authorized_start).to, S::charging);
}

TEST(ConnectorFsm, SessionStatuses) {
  EXPECT_TRUE(ConnectorFsm::in_session(S::charging));
  EXPECT_TRUE(ConnectorFsm::in_session(S::suspended_ev));
  EXPECT_TRUE(ConnectorFsm::in_session(S::suspended_evse));
  EXPECT_FALSE(ConnectorFsm::in_session(S::finishing));
  EXPECT_FALSE(ConnectorFsm::in_session(S::preparing));
}
